"""Batch predictions with the champion model (``lepton predict``)."""

import polars as pl
import torch

from lepton_assets.champion_pointer import current_champion
from lepton_assets.models import load_model, predict_logits
from resources.artifact_store import ArtifactStore

PREDICTION = "prediction"
CONFIDENCE = "confidence"


def predict_frame(store: ArtifactStore, frame: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """The frame's non-feature columns plus the champion's predicted class and its
    probability; also returns which model predicted. The model is loaded weights-only."""
    pointer = current_champion(store)
    if pointer is None:
        raise ValueError(f"no champion under {store.uri}: run the training job first")
    model, info = load_model(store, pointer["model_prefix"])
    columns = info["feature_columns"]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"input lacks the model's feature columns {missing[:10]}")
    features = frame.select(pl.col(columns).cast(pl.Float64, strict=False))
    bad = features.with_row_index("row").filter(pl.any_horizontal(pl.col(columns).is_null()))
    if bad.height:
        raise ValueError(
            f"{bad.height} rows have missing or non-numeric features, first at row {bad['row'][0]}"
        )
    probabilities = predict_logits(
        model, torch.from_numpy(features.to_numpy().astype("float32"))
    ).softmax(1)
    confidence, index = probabilities.max(1)
    classes = info["classes"]
    out = frame.drop(columns).with_columns(
        pl.Series(PREDICTION, [classes[i] for i in index.tolist()]),
        pl.Series(CONFIDENCE, confidence.numpy().astype("float64")),
    )
    return out, pointer["model_prefix"]

"""Batch predictions with the champion model (``lepton predict``).

Rows are typed by ``rows.typed_features`` (ingestion's typing) and scored by
``models.model_scores`` with the champion's own preprocessing, as evaluation scores them.
"""

from pathlib import Path

import polars as pl

from lepton_core.models import champion_files, load_model, model_inputs, model_scores
from lepton_core.privacy import check_key, protect
from lepton_core.registry import require_champion
from lepton_core.rows import image_reader, typed_features
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore

PREDICTION = "prediction"
CONFIDENCE = "confidence"


def predict_frame(
    store: ArtifactStore,
    frame: pl.DataFrame,
    image_dir: Path | None = None,
    pii_key: str | None = None,
) -> tuple[pl.DataFrame, str]:
    """The frame's other columns plus the champion's prediction (the user's label, or a
    value in the target's unit) and, for classes, its probability; also returns which model
    predicted. The model is loaded weights-only. Categorical columns the spec hashes are
    hashed with ``pii_key`` (the ingestion key) before encoding, as the model learned them."""
    pointer = require_champion(store)
    model, info = load_model(store, pointer["model_prefix"], champion_files(pointer))
    spec = DatasetSpec.model_validate(info["spec"])
    key = check_key(spec, pii_key, "LEPTON_PII_KEY")
    typed = typed_features(protect(frame, spec, key), spec, image_reader(image_dir))
    scores = model_scores(model, info, model_inputs(info, typed))
    rest = frame.drop([c for c in spec.columns[2:] if c in frame.columns])
    if spec.classes is None:
        return rest.with_columns(pl.Series(PREDICTION, scores.numpy())), pointer["model_prefix"]
    confidence, index = scores.max(1)
    out = rest.with_columns(
        pl.Series(PREDICTION, [spec.classes[i] for i in index.tolist()]),
        pl.Series(CONFIDENCE, confidence.numpy().astype("float64")),
    )
    return out, pointer["model_prefix"]

"""Batch predictions with the champion model (``lepton predict``)."""

from pathlib import Path

import polars as pl

from lepton_core.data import encode_inputs
from lepton_core.images import IMAGE_PIXELS, decode_column
from lepton_core.models import load_model, predict_outputs
from lepton_core.privacy import check_key, protect
from lepton_core.registry import current_champion
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore
from lepton_core.tasks import regression_outputs

PREDICTION = "prediction"
CONFIDENCE = "confidence"


def typed_features(frame: pl.DataFrame, spec: DatasetSpec, image_dir: Path | None) -> pl.DataFrame:
    """The model's feature columns, typed; a bad value fails naming the row and column."""
    missing = [c for c in spec.columns[2:] if c not in frame.columns]
    if missing:
        raise ValueError(f"input lacks the model's feature columns {missing[:10]}")
    # The row index keeps the frame's height when the model reads images only.
    typed = frame.with_row_index("row").select(
        "row",
        *(pl.col(c).cast(pl.Float64, strict=False) for c in spec.feature_columns),
        *(pl.col(c).cast(pl.String) for c in spec.categorical_columns),
    )
    for column in spec.feature_columns:
        problem = frame[column].is_not_null() & typed[column].is_null()  # not a number
        if column not in spec.nullable_columns:
            problem = problem | typed[column].is_null()
        rows = problem.arg_true()
        if len(rows):
            raise ValueError(
                f"{len(rows)} rows have a missing or non-numeric {column}, first at row {rows[0]}"
            )
    if spec.image is None:
        return typed
    if image_dir is None:
        raise ValueError(f"the model reads images ({spec.image.column}): give the image folder")
    paths = frame[spec.image.column].cast(pl.String).to_list()
    pixels, errors = decode_column(paths, lambda p: (image_dir / p).read_bytes(), spec.image)
    failed = [(i, e) for i, e in enumerate(errors) if e or pixels[i] is None]
    if failed:
        raise ValueError(f"row {failed[0][0]}: {failed[0][1] or 'no image path'}")
    return typed.with_columns(pl.Series(IMAGE_PIXELS, pixels, dtype=pl.Binary))


def predict_frame(
    store: ArtifactStore,
    frame: pl.DataFrame,
    image_dir: Path | None = None,
    pii_key: str | None = None,
) -> tuple[pl.DataFrame, str]:
    """The frame's other columns plus the champion's prediction (and, for classes, its
    probability); also returns which model predicted. The model is loaded weights-only.
    Categorical columns the spec hashes are hashed with ``pii_key`` (the ingestion key)
    before encoding, as the model learned them."""
    pointer = current_champion(store)
    if pointer is None:
        raise ValueError(f"no champion under {store.uri}: run the training job first")
    model, info = load_model(store, pointer["model_prefix"])
    spec = DatasetSpec.model_validate(info["spec"])
    key = check_key(spec, pii_key, "LEPTON_PII_KEY")
    typed = typed_features(protect(frame, spec, key), spec, image_dir)
    inputs = encode_inputs(typed, spec, info["preprocessing"])
    outputs = predict_outputs(model, inputs)
    rest = frame.drop([c for c in spec.columns[2:] if c in frame.columns])
    if spec.classes is None:
        values = regression_outputs(outputs).numpy().astype("float64")
        return rest.with_columns(pl.Series(PREDICTION, values)), pointer["model_prefix"]
    confidence, index = outputs.softmax(1).max(1)
    out = rest.with_columns(
        pl.Series(PREDICTION, [spec.classes[i] for i in index.tolist()]),
        pl.Series(CONFIDENCE, confidence.numpy().astype("float64")),
    )
    return out, pointer["model_prefix"]

"""Datasets: validated days -> a versioned train/val/test dataset -> tensors for a model.

The split of a sample is a hash of its id, so it never changes as days are added. What the
model needs to read raw values (imputation values, standardization, categorical
vocabularies) is learned from the train split once, stored in ``dataset.json`` as
``preprocessing`` and copied into every model's description.

A model's ``forward`` takes one tensor per input, in ``DatasetSpec.input_names`` order:
``numeric`` float32 [B, n] (nulls as NaN; the model's ``Preprocess`` fills and standardizes
them), ``categorical`` int64 [B, k] (index 0 is the unknown bucket) and ``image`` float32
[B, C, H, W] in [0, 1].
"""

import hashlib
import json
from typing import Any

import numpy as np
import polars as pl
import polars_hash as plh
import torch
from pydantic import BaseModel, ConfigDict

from lepton_core.drift import reference_summary
from lepton_core.images import IMAGE_PIXELS
from lepton_core.keys import dataset_info_key, drift_reference_key, split_key, validated_key
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore

SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "_split"
UNKNOWN = 0  # the categorical index of a value outside the vocabulary (or null)


class DatasetInfo(BaseModel):
    """What a model factory is told about the data it will be fed."""

    model_config = ConfigDict(frozen=True)

    task: str
    inputs: list[str]
    num_numeric: int
    numeric_shape: list[int] | None
    categorical_cardinalities: list[int]  # vocabulary size + 1 (the unknown bucket)
    image_shape: list[int] | None
    num_outputs: int  # classes, or 1 for regression
    classes: list[int] | None


def split_expr(id_column: str, val_percent: int = 10, test_percent: int = 10) -> pl.Expr:
    """The split of each sample, from a hash of its id alone: the first 8 bytes of the id's
    SHA-256, as a big-endian integer, modulo 100 (test below ``test_percent``, then val).

    A sample keeps its split forever, whatever other data is added or removed, so no test
    sample ever leaks into training when the dataset grows. Computed as one Polars
    expression (polars-hash's SHA-256 in Rust), no Python per row; the assignment of every
    id is the one the earlier per-row ``hashlib`` version gave (pinned by a test).
    """
    digest = plh.col(id_column).chash.sha2_256()
    bucket = digest.str.slice(0, 16).str.to_integer(base=16, dtype=pl.UInt64) % 100
    return (
        pl.when(bucket < test_percent)
        .then(pl.lit("test"))
        .when(bucket < test_percent + val_percent)
        .then(pl.lit("val"))
        .otherwise(pl.lit("train"))
    )


def assign_splits(frame: pl.DataFrame, id_column: str) -> pl.DataFrame:
    return frame.with_columns(split_expr(id_column).alias(SPLIT_COLUMN))


def fit_preprocessing(train: pl.DataFrame, spec: DatasetSpec) -> dict[str, Any]:
    """Imputation values, mean and std of numeric features, and categorical vocabularies,
    all from the train split. A constant feature gets std 1."""
    numeric = spec.feature_columns
    stats: dict[str, list[float]] = {"fill": [], "mean": [], "std": []}
    if numeric:
        present = train.select(numeric)
        fill = present.median() if spec.impute == "median" else present.mean()
        # An all-null column has no statistic: fill 0, mean 0, std 1 (values stay null-free).
        stats = {
            "fill": [0.0 if v is None else float(v) for v in fill.row(0)],
            "mean": [0.0 if m is None else float(m) for m in present.mean().row(0)],
            "std": [float(s) if s and s > 1e-8 else 1.0 for s in present.std().row(0)],
        }
    return {
        "numeric": {"columns": numeric, **stats},
        "categorical": {
            c: sorted(train[c].drop_nulls().unique().to_list()) for c in spec.categorical_columns
        },
    }


def dataset_description(spec: DatasetSpec, preprocessing: dict[str, Any]) -> DatasetInfo:
    return DatasetInfo(
        task=spec.task,
        inputs=spec.input_names,
        num_numeric=len(spec.feature_columns),
        numeric_shape=spec.input_shape,
        categorical_cardinalities=[
            len(preprocessing["categorical"][c]) + 1 for c in spec.categorical_columns
        ],
        image_shape=spec.image.shape if spec.image else None,
        num_outputs=len(spec.classes) if spec.classes else 1,
        classes=spec.classes,
    )


def encode_categorical(frame: pl.DataFrame, vocab: dict[str, list[str]]) -> torch.Tensor:
    """Vocabulary indices (1-based); unseen values and nulls get ``UNKNOWN``."""
    codes = frame.select(
        pl.col(c)
        .replace_strict(values, list(range(1, len(values) + 1)), default=UNKNOWN)
        .cast(pl.Int64)
        for c, values in vocab.items()
    )
    return torch.from_numpy(codes.to_numpy().astype("int64"))


def encode_images(frame: pl.DataFrame, shape: list[int]) -> torch.Tensor:
    raw = b"".join(frame[IMAGE_PIXELS].to_list())
    pixels = np.frombuffer(raw, dtype=np.uint8).reshape(frame.height, *shape)
    return torch.from_numpy(pixels.astype("float32") / 255.0)


def encode_inputs(
    frame: pl.DataFrame, spec: DatasetSpec, preprocessing: dict[str, Any]
) -> list[torch.Tensor]:
    """The model's input tensors for ``frame``, in ``spec.input_names`` order."""
    inputs = []
    if spec.feature_columns:
        numeric = frame.select(pl.col(spec.feature_columns).cast(pl.Float64)).to_numpy()
        inputs.append(torch.from_numpy(numeric.astype("float32")))
    if spec.categorical_columns:
        inputs.append(encode_categorical(frame, preprocessing["categorical"]))
    if spec.image is not None:
        inputs.append(encode_images(frame, spec.image.shape))
    return inputs


def encode_target(frame: pl.DataFrame, spec: DatasetSpec) -> torch.Tensor:
    """Class indices (classification) or float32 values (regression)."""
    if spec.classes is None:
        return torch.tensor(
            frame[spec.label_column].cast(pl.Float64).to_numpy(), dtype=torch.float32
        )
    index = frame[spec.label_column].replace_strict(spec.classes, list(range(len(spec.classes))))
    return torch.tensor(index.cast(pl.Int64).to_numpy())


def dummy_inputs(info: DatasetInfo, batch: int = 2) -> list[torch.Tensor]:
    """Zero tensors of the inputs' shapes (factory checks, tracing for quantization)."""
    shapes = {
        "numeric": ([batch, info.num_numeric], torch.float32),
        "categorical": ([batch, len(info.categorical_cardinalities)], torch.int64),
        "image": ([batch, *(info.image_shape or [])], torch.float32),
    }
    return [torch.zeros(*shapes[name][0], dtype=shapes[name][1]) for name in info.inputs]


# -- versioned datasets in the artifact store ----------------------------------------------
def read_dataset_info(store: ArtifactStore, version: str) -> dict[str, Any]:
    return store.read_json(dataset_info_key(version))


def load_split(store: ArtifactStore, version: str, split: str) -> pl.DataFrame:
    return store.read_parquet(split_key(version, split))


def load_tensors(
    store: ArtifactStore, version: str, split: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One split of a dataset version as (model inputs, target): the one loader used by the
    Horovod worker, compression and evaluation."""
    info = read_dataset_info(store, version)
    spec = DatasetSpec.model_validate(info["spec"])
    frame = load_split(store, version, split)
    return encode_inputs(frame, spec, info["preprocessing"]), encode_target(frame, spec)


def accepted_partitions(store: ArtifactStore) -> tuple[list[dict], list[str]]:
    """Validated partition manifests whose blocking check passed, and the days left out."""
    accepted, rejected = [], []
    for key in store.list("validated"):
        if not key.endswith(".json"):
            continue
        manifest = store.read_json(key)
        (accepted if manifest["check_passed"] else rejected).append(manifest)
    return accepted, [m["partition"] for m in rejected]


def build_dataset(
    store: ArtifactStore, spec: DatasetSpec, partitions: list[dict]
) -> tuple[str, dict]:
    """Concatenate validated partitions, split, learn preprocessing, write; (version, info)."""
    ordered = sorted(partitions, key=lambda m: m["partition"])
    fingerprint = json.dumps(
        {"spec": spec.model_dump(), "parts": [(m["partition"], m["sha256"]) for m in ordered]},
        sort_keys=True,
    )
    version = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    frame = pl.concat([store.read_parquet(validated_key(m["partition"])) for m in ordered])
    frame = assign_splits(frame.sort(spec.id_column), spec.id_column)
    splits = {s: frame.filter(pl.col(SPLIT_COLUMN) == s).drop(SPLIT_COLUMN) for s in SPLITS}
    if any(f.height == 0 for f in splits.values()):
        raise ValueError(
            f"dataset {version} has an empty split ({ {s: f.height for s, f in splits.items()} }); "
            "ingest more partitions"
        )
    hashes = {s: store.write_parquet(split_key(version, s), f) for s, f in splits.items()}
    info = {
        "version": version,
        "spec": spec.model_dump(),
        "partitions": [m["partition"] for m in ordered],
        # (day, content hash) pairs: what retraining_sensor compares new validated days with.
        "inputs": [[m["partition"], m["sha256"]] for m in ordered],
        "rows": {s: f.height for s, f in splits.items()},
        "sha256": hashes,
        "preprocessing": fit_preprocessing(splits["train"], spec),
    }
    store.write_json(dataset_info_key(version), info)
    vocab = info["preprocessing"]["categorical"]
    summary = reference_summary(spec, splits["train"], vocab)
    store.write_json(drift_reference_key(version), summary)
    return version, info

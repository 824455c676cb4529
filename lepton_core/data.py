"""Datasets: validated days -> a versioned train/val/test dataset -> tensors for a model.

The split of a sample is a hash of its id, so it never changes as days are added. Each day
is split once into its own shard (``shards/<day>-<digest>/{train,val,test}.parquet``); a
dataset version is the list of its days' shards, so a retrain splits only new days and a
training rank streams row groups of the shards (``streaming``). What the model needs to read
raw values (imputation values, standardization, categorical vocabularies, the regression
target's location and scale) is learned from the train split once, stored in ``dataset.json``
as ``preprocessing`` and copied into every model's description. Whatever scores a model
encodes raw rows with that model's own preprocessing (``models.model_inputs``).

Targets: a class label (an integer, string or boolean declared in ``classes``) becomes its
index in ``classes``; a regression target is standardized with the train split's mean and
standard deviation, so a model (and a user's loss) sees values of unit scale whatever the
target's unit, and ``unscale_target`` turns outputs back into the target's unit.

A model's ``forward`` takes one tensor per input, in ``DatasetSpec.input_names`` order:
``numeric`` float32 [B, n] (nulls as NaN; the model's ``Preprocess`` fills and standardizes
them), ``categorical`` int64 [B, k] (index 0 is the unknown bucket) and ``image`` float32
[B, C, H, W] in [0, 1].
"""

import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np
import polars as pl
import polars_hash as plh
import torch
from pydantic import BaseModel, ConfigDict

from lepton_core.drift import category_summary, image_brightness, value_counts
from lepton_core.images import IMAGE_PIXELS
from lepton_core.keys import (
    annotations_key,
    dataset_info_key,
    drift_reference_key,
    shard_key,
    shard_manifest_key,
    shard_prefix,
    validated_key,
)
from lepton_core.rows import PROVENANCE, annotated
from lepton_core.sketch import NumberSketch, numeric_statistics
from lepton_core.spec import Classes, DatasetSpec
from lepton_core.store import ArtifactStore

SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "_split"
UNKNOWN = 0  # the categorical index of a value outside the vocabulary (or null)
# A shard's Parquet row group is what a rank reads at once: at most ROW_GROUP_ROWS rows and
# about ROW_GROUP_BYTES in memory, whichever is fewer rows. Sized by bytes too, so that a rank
# holding a few groups (as float32: image pixels take 4x their stored bytes) stays bounded for
# any image size: 16,384 rows of 224x224x3 images would be 2.5 GB a group.
ROW_GROUP_ROWS = 16_384
ROW_GROUP_BYTES = 16 * 2**20


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
    classes: Classes | None


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


def preprocessing_of(
    spec: DatasetSpec,
    stats: list[tuple[float, float, float]],
    vocab: dict[str, list],
    target: tuple[float, float, float] | None,
) -> dict[str, Any]:
    """The ``preprocessing`` record from each numeric feature's ``numeric_statistics`` (and
    the regression target's)."""
    fill, mean, std = ([column[i] for column in stats] for i in range(3))
    record: dict[str, Any] = {
        "numeric": {"columns": spec.feature_columns, "fill": fill, "mean": mean, "std": std},
        "categorical": vocab,
    }
    if target is not None:
        record["target"] = {"mean": target[1], "std": target[2]}
    return record


def fit_preprocessing(train: pl.DataFrame, spec: DatasetSpec) -> dict[str, Any]:
    """Imputation values, mean and std of numeric features, categorical vocabularies and the
    regression target's mean and std, all from the train split (a frame in memory)."""
    stats = [numeric_statistics(train[c].drop_nulls(), spec.impute) for c in spec.feature_columns]
    vocab = {c: sorted(train[c].drop_nulls().unique().to_list()) for c in spec.categorical_columns}
    label = train[spec.label_column].cast(pl.Float64) if spec.classes is None else None
    target = numeric_statistics(label, "mean") if label is not None else None
    return preprocessing_of(spec, stats, vocab, target)


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


def encode_categorical(
    frame: pl.DataFrame, columns: list[str], vocab: dict[str, list[str]]
) -> torch.Tensor:
    """Vocabulary indices (1-based) of ``columns``, in that order (the spec's, which
    ``DatasetInfo.categorical_cardinalities`` follows; the stored vocabulary's keys are
    sorted); unseen values and nulls get ``UNKNOWN``."""
    codes = frame.select(
        pl.col(c)
        .replace_strict(vocab[c], list(range(1, len(vocab[c]) + 1)), default=UNKNOWN)
        .cast(pl.Int64)
        for c in columns
    )
    return torch.from_numpy(codes.to_numpy(order="c", writable=True))


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
        # float64 first, then float32, as numpy's astype did: a large integer casts otherwise
        # straight to float32. In row order (C): a batch is one contiguous block to copy.
        numeric = pl.col(spec.feature_columns).cast(pl.Float64).cast(pl.Float32)
        inputs.append(torch.from_numpy(frame.select(numeric).to_numpy(order="c", writable=True)))
    if spec.categorical_columns:
        inputs.append(
            encode_categorical(frame, spec.categorical_columns, preprocessing["categorical"])
        )
    if spec.image is not None:
        inputs.append(encode_images(frame, spec.image.shape))
    return inputs


def target_values(frame: pl.DataFrame, spec: DatasetSpec) -> torch.Tensor:
    """The truth in the user's terms: class indices in ``classes`` order (the one place a
    label becomes an index), or float64 values in the target's unit."""
    if spec.classes is None:
        return torch.from_numpy(frame[spec.label_column].cast(pl.Float64).to_numpy().copy())
    index = frame[spec.label_column].replace_strict(spec.classes, list(range(len(spec.classes))))
    return torch.tensor(index.cast(pl.Int64).to_numpy())


def target_scaling(preprocessing: dict[str, Any]) -> tuple[float, float]:
    """(mean, std) a regression target was standardized with; (0, 1) for classification and
    for models trained before targets were scaled (they learned raw values)."""
    target = preprocessing.get("target")
    return (target["mean"], target["std"]) if target else (0.0, 1.0)


def encode_target(
    frame: pl.DataFrame, spec: DatasetSpec, preprocessing: dict[str, Any]
) -> torch.Tensor:
    """What a model trains on: class indices, or the standardized target as float32."""
    values = target_values(frame, spec)
    if spec.classes is not None:
        return values
    mean, std = target_scaling(preprocessing)
    return ((values - mean) / std).float()


def unscale_target(outputs: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    """Regression outputs ([B] or [B, 1], standardized) as float64 values in the target's
    unit: what leaves a model for evaluation, predict and serving."""
    mean, std = target_scaling(preprocessing)
    return outputs.reshape(outputs.shape[0]).double() * std + mean


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


def split_keys(info: dict[str, Any], split: str) -> list[str]:
    """The Parquet files of one split of a dataset version, one per day, in day order."""
    return [shard_key(prefix, split) for prefix in info["shards"]]


def load_split(store: ArtifactStore, version: str, split: str) -> pl.DataFrame:
    """One split whole, in memory (compression and evaluation; ranks stream theirs)."""
    keys = split_keys(read_dataset_info(store, version), split)
    return pl.concat([store.read_parquet(k) for k in keys], how="vertical_relaxed")


def load_tensors(
    store: ArtifactStore, version: str, split: str
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One split of a dataset version as (model inputs, target): the one loader used by
    compression and evaluation (a training rank streams its part: ``streaming``)."""
    info = read_dataset_info(store, version)
    spec = DatasetSpec.model_validate(info["spec"])
    frame = load_split(store, version, split)
    preprocessing = info["preprocessing"]
    return encode_inputs(frame, spec, preprocessing), encode_target(frame, spec, preprocessing)


def accepted_partitions(store: ArtifactStore) -> tuple[list[dict], list[str]]:
    """Validated partition manifests whose blocking check passed, and the days left out."""
    accepted, rejected = [], []
    for key in store.list("validated"):
        if not key.endswith(".json"):
            continue
        manifest = store.read_json(key)
        (accepted if manifest["check_passed"] else rejected).append(manifest)
    return accepted, [m["partition"] for m in rejected]


def row_group_rows(frame: pl.DataFrame) -> int:
    """Rows per row group for ``frame``: ``ROW_GROUP_ROWS``, fewer where its rows are so wide
    that a group would pass ``ROW_GROUP_BYTES``; at least one."""
    per_row = frame.estimated_size() / max(frame.height, 1)
    return max(1, min(ROW_GROUP_ROWS, int(ROW_GROUP_BYTES // max(per_row, 1))))


def write_shard(
    store: ArtifactStore,
    spec: DatasetSpec,
    manifest: dict,
    superseded: frozenset[str] | set[str] = frozenset(),
) -> dict[str, Any]:
    """One validated day split into train/val/test Parquet files of row groups sized by
    ``row_group_rows``, without the rows of ``superseded`` ids (a later annotation corrects
    them) and without provenance columns; written once per (day content, spec, superseded)
    and shared by every dataset version that holds the day, so a retrain splits only the
    days it has not seen."""
    day = manifest["partition"]
    identity = {"spec": spec.model_dump(), "sha256": manifest["sha256"]}
    if superseded:
        identity["superseded"] = sorted(superseded)
    fingerprint = json.dumps(identity, sort_keys=True)
    prefix = shard_prefix(day, hashlib.sha256(fingerprint.encode()).hexdigest()[:16])
    if store.exists(shard_manifest_key(prefix)):
        return store.read_json(shard_manifest_key(prefix))
    frame = store.read_parquet(validated_key(day))
    frame = frame.filter(~pl.col(spec.id_column).cast(pl.String).is_in(list(superseded)))
    frame = assign_splits(frame.drop(PROVENANCE, strict=False), spec.id_column)
    shard: dict[str, Any] = {"prefix": prefix, "partition": day, "rows": {}, "sha256": {}}
    rows = row_group_rows(frame)
    for split in SPLITS:
        part = frame.filter(pl.col(SPLIT_COLUMN) == split).drop(SPLIT_COLUMN)
        key = shard_key(prefix, split)
        shard["sha256"][split] = store.write_parquet(key, part, row_group_size=rows)
        shard["rows"][split] = part.height
    store.write_json(shard_manifest_key(prefix), shard)
    return shard


def train_statistics(
    store: ArtifactStore, spec: DatasetSpec, keys: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(preprocessing, drift reference) of the train split in ``keys``. Each file is read
    once, only the columns needed (column projection, also on a remote file); numbers (the
    regression target and images' brightness included) go into a ``NumberSketch`` of
    bounded size, categories and classes are counted."""
    label = spec.label_column
    numbers = {c: NumberSketch() for c in spec.feature_columns}
    if spec.classes is None:
        numbers[label] = NumberSketch()
    counted = [*spec.categorical_columns, *([label] if spec.classes is not None else [])]
    counts: dict[str, Counter] = {c: Counter() for c in counted}
    brightness = NumberSketch()
    pixels = [IMAGE_PIXELS] if spec.image is not None else []
    for key in keys:
        part = store.read_parquet(key, columns=[*numbers, *counted, *pixels])
        for column, sketch in numbers.items():
            sketch.add(part[column])
        for column, total in counts.items():
            total.update(value_counts(part[column]))
        if pixels:
            brightness.add(pl.Series(image_brightness(part.select(pixels))))
    stats, summary = [], {}
    for column in spec.feature_columns:
        stats.append(numbers[column].statistics(spec.impute))
        summary[column] = numbers[column].summary()
    vocab: dict[str, list] = {}
    for column in spec.categorical_columns:
        vocab[column] = sorted(v for v in counts[column] if v is not None)
        summary[column] = category_summary(vocab[column], dict(counts[column]))
    target = None
    if spec.classes is not None:
        summary[label] = category_summary(list(spec.classes), dict(counts[label]))
    else:
        target = numbers[label].statistics("mean")
        summary[label] = numbers[label].summary()
    if spec.image is not None:
        summary[spec.image.column] = brightness.summary()
    return preprocessing_of(spec, stats, vocab, target), summary


def annotations_in_force(
    store: ArtifactStore, spec: DatasetSpec, ordered: list[dict]
) -> tuple[dict[str, set[str]], pl.DataFrame]:
    """(day -> the ids of its rows that a later day's annotation row corrects, the
    annotation rows in force with their provenance and day). The latest correction of an id
    wins; its row stays in its own day's shard, in the split its id hashes to, as the
    original row did."""
    later: set[str] = set()
    superseded: dict[str, set[str]] = {}
    kept: list[pl.DataFrame] = []
    for manifest in reversed(ordered):
        day = manifest["partition"]
        has_batch = bool(manifest.get("annotated_rows"))
        if not (later or has_batch):
            superseded[day] = set()
            continue
        columns = [spec.id_column, *([spec.label_column, *PROVENANCE] if has_batch else [])]
        frame = store.read_parquet(validated_key(day), columns=columns)
        frame = frame.with_columns(pl.col(spec.id_column).cast(pl.String))
        superseded[day] = set(frame[spec.id_column].to_list()) & later
        if has_batch:
            rows = frame.filter(annotated(frame))
            rows = rows.filter(~pl.col(spec.id_column).is_in(list(later)))
            kept.append(rows.with_columns(pl.lit(day).alias("day")))
            later |= set(rows[spec.id_column].to_list())
    schema = {c: pl.String for c in (spec.id_column, *PROVENANCE, "day")}
    corrections = pl.concat(kept[::-1]) if kept else pl.DataFrame(schema=schema)
    return superseded, corrections


def build_dataset(
    store: ArtifactStore, spec: DatasetSpec, partitions: list[dict]
) -> tuple[str, dict]:
    """Split each validated day into its shard (days already split are reused), learn
    preprocessing and the drift reference from the train shards, write; (version, info).

    Memory holds one day, or one column of one train file, at a time."""
    ordered = sorted(partitions, key=lambda m: m["partition"])
    fingerprint = json.dumps(
        {"spec": spec.model_dump(), "parts": [(m["partition"], m["sha256"]) for m in ordered]},
        sort_keys=True,
    )
    version = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    superseded, corrections = annotations_in_force(store, spec, ordered)
    shards = [write_shard(store, spec, m, superseded[m["partition"]]) for m in ordered]
    rows = {s: sum(shard["rows"][s] for shard in shards) for s in SPLITS}
    if not all(rows.values()):
        raise ValueError(f"dataset {version} has an empty split ({rows}); ingest more partitions")
    info = {
        "version": version,
        "spec": spec.model_dump(),
        "partitions": [m["partition"] for m in ordered],
        # (day, content hash) pairs: what retraining_sensor compares new validated days with.
        "inputs": [[m["partition"], m["sha256"]] for m in ordered],
        "shards": [shard["prefix"] for shard in shards],
        "rows": rows,
        "annotations": {
            "rows": corrections.height,
            "superseded": {day: len(ids) for day, ids in superseded.items() if ids},
        },
    }
    if corrections.height:
        store.write_parquet(annotations_key(version), corrections)
    preprocessing, summary = train_statistics(store, spec, split_keys(info, "train"))
    info["preprocessing"] = preprocessing
    store.write_json(dataset_info_key(version), info)
    store.write_json(drift_reference_key(version), summary)
    return version, info

"""Training: validated partitions -> a versioned dataset -> a Horovod-trained model.

Unpartitioned assets keep their artifacts under versioned prefixes and point at the latest
with ``current/<asset>.json``, which their downstream assets read.
"""

import hashlib
import json
from typing import Literal

import dagster as dg
import polars as pl
import torch
from pydantic import Field

from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.models import ARCHITECTURES, default_arch
from lepton_assets.validation import validated_batches, validated_key
from resources.artifact_store import ArtifactStore, ArtifactStoreResource
from resources.dataset import DatasetResource
from resources.horovod_launcher import HorovodLauncherResource

SPLITS = ("train", "val", "test")
SPLIT_COLUMN = "_split"


def current_key(asset_name: str) -> str:
    return f"current/{asset_name}.json"


def split_of(sample_id: str, val_percent: int = 10, test_percent: int = 10) -> str:
    """The split of one sample, from a hash of its id alone.

    A sample keeps its split forever, whatever other data is added or removed, so no test
    sample ever leaks into training when the dataset grows.
    """
    bucket = int.from_bytes(hashlib.sha256(sample_id.encode("utf-8")).digest()[:8], "big") % 100
    if bucket < test_percent:
        return "test"
    if bucket < test_percent + val_percent:
        return "val"
    return "train"


def assign_splits(frame: pl.DataFrame, id_column: str) -> pl.DataFrame:
    return frame.with_columns(
        pl.col(id_column).map_elements(split_of, return_dtype=pl.String).alias(SPLIT_COLUMN)
    )


def feature_stats(train: pl.DataFrame, feature_columns: list[str]) -> dict[str, list[float]]:
    """Per-feature mean and std of the training split; a constant feature gets std 1."""
    means = train.select(pl.col(feature_columns).mean()).row(0)
    stds = train.select(pl.col(feature_columns).std()).row(0)
    return {
        "mean": [float(m) for m in means],
        "std": [float(s) if s and s > 1e-8 else 1.0 for s in stds],
    }


def dataset_prefix(version: str) -> str:
    return f"datasets/{version}"


def load_split(store: ArtifactStore, version: str, split: str) -> pl.DataFrame:
    return store.read_parquet(f"{dataset_prefix(version)}/{split}.parquet")


def features_and_labels(
    frame: pl.DataFrame, spec: DatasetSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spec's feature columns as a float32 matrix, and labels as class indices."""
    features = torch.from_numpy(frame.select(spec.feature_columns).to_numpy().astype("float32"))
    index = {c: i for i, c in enumerate(spec.classes)}
    labels = torch.tensor([index[v] for v in frame[spec.label_column].to_list()])
    return features, labels


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
    """Concatenate validated partitions, split, compute stats, write; returns (version, info)."""
    ordered = sorted(partitions, key=lambda m: m["partition"])
    fingerprint = json.dumps(
        {"spec": spec.model_dump(), "parts": [(m["partition"], m["sha256"]) for m in ordered]},
        sort_keys=True,
    )
    version = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    frame = pl.concat([store.read_parquet(validated_key(m["partition"])) for m in ordered])
    frame = assign_splits(frame.sort(spec.id_column), spec.id_column)
    splits = {s: frame.filter(pl.col(SPLIT_COLUMN) == s).drop(SPLIT_COLUMN) for s in SPLITS}
    if splits["train"].height == 0 or splits["val"].height == 0 or splits["test"].height == 0:
        raise ValueError(
            f"dataset {version} has an empty split ({ {s: f.height for s, f in splits.items()} }); "
            "ingest more partitions"
        )
    prefix = dataset_prefix(version)
    hashes = {s: store.write_parquet(f"{prefix}/{s}.parquet", f) for s, f in splits.items()}
    info = {
        "version": version,
        "spec": spec.model_dump(),
        "partitions": [m["partition"] for m in ordered],
        # (day, content hash) pairs: what retraining_sensor compares new validated days with.
        "inputs": [[m["partition"], m["sha256"]] for m in ordered],
        "rows": {s: f.height for s, f in splits.items()},
        "sha256": hashes,
        "stats": feature_stats(splits["train"], spec.feature_columns),
    }
    store.write_json(f"{prefix}/dataset.json", info)
    return version, info


@dg.asset(
    deps=[validated_batches],
    group_name="training",
    kinds={"polars", "parquet"},
)
def training_dataset(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    dataset: DatasetResource,
) -> dg.MaterializeResult:
    """Every validated day whose checks passed, as one versioned train/val/test dataset.

    The split of a sample is a hash of its id (80/10/10), so it never changes as days are
    added; normalization statistics come from the train split only. The version is a hash of
    the spec and the validated batches' content, so the same inputs give the same version.
    """
    spec = dataset.get_spec()
    store = artifacts.get_store()
    accepted, left_out = accepted_partitions(store)
    if not accepted:
        raise ValueError(
            f"no validated partition with a passing check under {store.url('validated')}/"
        )
    if left_out:
        context.log.warning(f"left out partitions whose validation check failed: {left_out}")
    version, info = build_dataset(store, spec, accepted)
    store.write_json(current_key("training_dataset"), {"version": version})
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "partitions": len(info["partitions"]),
            "left_out_partitions": dg.MetadataValue.json(left_out),
            **{f"{s}_rows": n for s, n in info["rows"].items()},
            "path": dg.MetadataValue.path(store.url(dataset_prefix(version))),
        }
    )


class TrainingConfig(dg.Config):
    """Knobs of one training run, shown in the Launchpad."""

    arch: str = Field(
        default="",
        description=f"model architecture, one of {ARCHITECTURES}; empty: cnn for 1-channel "
        "images, resnet for 3-channel images, else mlp",
    )
    epochs: int = Field(default=25, ge=1, description="most passes over the training split")
    batch_size: int = Field(default=32, ge=1, description="samples per step on each process")
    learning_rate: float = Field(
        default=1e-3,
        gt=0,
        description="Adam learning rate of one process; scaled by the number of processes "
        "(Horovod's linear scaling rule) after the warm-up",
    )
    warmup_epochs: int = Field(
        default=1, ge=0, description="epochs to ramp the learning rate up to its scaled value"
    )
    patience: int = Field(
        default=5,
        ge=0,
        description="stop after this many epochs without a validation-loss gain and keep the "
        "best epoch's weights; 0 trains all epochs",
    )
    fp16_allreduce: bool = Field(
        default=False, description="compress gradients to fp16 for the allreduce"
    )
    amp: Literal["bf16", "fp16", "off"] = Field(
        default="bf16", description="automatic mixed precision on CUDA (ignored on CPU)"
    )
    seed: int = Field(default=0, description="seed of initialization and shuffling")


@dg.asset(
    deps=[training_dataset],
    group_name="training",
    kinds={"torch", "horovod"},
    # One Horovod job at a time: its processes take every core (or GPU) they are given.
    pool="horovod_training",
    # A retry resumes from the last epoch checkpoint of the same run, not from scratch.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    artifacts: ArtifactStoreResource,
    horovod: HorovodLauncherResource,
) -> dg.MaterializeResult:
    """A PyTorch classifier trained by a real Horovod job on the current training dataset.

    The step launches ``horovodrun`` with the worker module ``lepton_assets.train_worker``;
    rank 0 streams per-epoch metrics to this step's log through Dagster Pipes, checkpoints
    every epoch, saves the state dict and reports loss/accuracy per epoch and samples/s as
    metadata. A retry, or a re-execution of the run, resumes from the last checkpoint.
    """
    store = artifacts.get_store()
    version = store.read_json(current_key("training_dataset"))["version"]
    info = store.read_json(f"{dataset_prefix(version)}/dataset.json")
    spec = DatasetSpec.model_validate(info["spec"])
    arch = config.arch or default_arch(spec.input_shape)
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    run = context.run
    # Retries share the run id and re-executions the root run id: both resume.
    lineage = run.root_run_id or run.run_id
    prefix = f"models/{version}-{run.run_id[:8]}"
    job = {
        **config.model_dump(),
        "arch": arch,
        "dataset_version": version,
        "output_prefix": prefix,
        "checkpoint_prefix": f"checkpoints/{version}/{lineage}",
    }
    job_key = f"runs/{run.run_id}/train_job.json"
    store.write_json(job_key, job)
    result = horovod.run_worker(
        context,
        module="lepton_assets.train_worker",
        args=["--artifacts-uri", store.uri, "--job-key", job_key],
    )
    store.write_json(current_key("trained_model"), {"prefix": prefix})
    return result

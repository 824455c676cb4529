"""The Horovod training worker: one process per rank, launched by ``horovodrun``.

    horovodrun -np 2 --gloo python -m lepton_assets.train_worker \
        --artifacts-uri file:///…/artifacts --job-key runs/<run>/train_job.json

Follows Horovod's canonical PyTorch recipe; every distributed line is marked ``# Horovod:``.
Rank 0 alone opens the Dagster Pipes channel: it streams per-epoch metrics to the Dagster
log, saves the model and reports the materialization.
"""

import argparse
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import horovod.torch as hvd
import polars as pl
import torch
from dagster_pipes import PipesContext, open_dagster_pipes
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.models import build_model, save_model, set_standardization
from lepton_assets.training import dataset_prefix, load_split
from resources.artifact_store import ArtifactStore


def tensors(frame: pl.DataFrame, spec: DatasetSpec) -> TensorDataset:
    features = torch.from_numpy(frame.select(spec.feature_columns).to_numpy().astype("float32"))
    class_index = {c: i for i, c in enumerate(spec.classes)}
    labels = torch.tensor([class_index[v] for v in frame[spec.label_column].to_list()])
    return TensorDataset(features, labels)


def metric_average(value: float, name: str) -> float:
    # Horovod: average a scalar over all ranks.
    return float(hvd.allreduce(torch.tensor(value, dtype=torch.float64), name=name))


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float]:
    """(mean loss, accuracy) over this rank's shard, averaged over ranks by sample count."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss_sum += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
    # Horovod: sum the shard totals so every rank sees the global figures.
    totals = hvd.allreduce(
        torch.tensor([loss_sum, correct, count], dtype=torch.float64), op=hvd.Sum, name="eval"
    )
    return float(totals[0] / totals[2]), float(totals[1] / totals[2])


@contextlib.contextmanager
def rank0_pipes() -> Iterator[PipesContext | None]:
    """The Dagster Pipes context on rank 0; None elsewhere (only one rank may report)."""
    if hvd.rank() == 0:
        with open_dagster_pipes() as pipes:
            yield pipes
    else:
        yield None


def train(store: ArtifactStore, job: dict[str, Any], pipes: PipesContext | None) -> None:
    info = store.read_json(f"{dataset_prefix(job['dataset_version'])}/dataset.json")
    spec = DatasetSpec.model_validate(info["spec"])
    torch.manual_seed(job["seed"])

    # Horovod: pin the device to the local rank.
    if torch.cuda.is_available():
        torch.cuda.set_device(hvd.local_rank())
        device = torch.device("cuda", hvd.local_rank())
    else:
        device = torch.device("cpu")

    train_set = tensors(load_split(store, job["dataset_version"], "train"), spec)
    val_set = tensors(load_split(store, job["dataset_version"], "val"), spec)
    # Horovod: each rank reads its own shard; set_epoch below reshuffles it every epoch.
    train_sampler = DistributedSampler(
        train_set, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=True, seed=job["seed"]
    )
    val_sampler = DistributedSampler(
        val_set, num_replicas=hvd.size(), rank=hvd.rank(), shuffle=False
    )
    train_loader = DataLoader(train_set, batch_size=job["batch_size"], sampler=train_sampler)
    val_loader = DataLoader(val_set, batch_size=256, sampler=val_sampler)

    model = build_model(job["arch"], len(spec.feature_columns), len(spec.classes), spec.input_shape)
    set_standardization(model, info["stats"]["mean"], info["stats"]["std"])
    model.to(device)

    # Horovod: scale the learning rate by the number of processes.
    optimizer = torch.optim.Adam(model.parameters(), lr=job["learning_rate"] * hvd.size())
    # Horovod: start every rank from rank 0's weights and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    # Horovod: average gradients over ranks at each step.
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for epoch in range(1, job["epochs"] + 1):
        model.train()
        # Horovod: a different shuffle of the shards every epoch.
        train_sampler.set_epoch(epoch)
        epoch_start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for x, y in train_loader:
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += float(loss) * len(y)
            seen += len(y)
        train_loss = metric_average(loss_sum / max(seen, 1), "train_loss")
        # Horovod: samples/s of the whole job, all ranks together.
        throughput = metric_average(seen / (time.perf_counter() - epoch_start), "tput") * hvd.size()
        val_loss, val_accuracy = evaluate(model, val_loader, device)
        row = {
            "epoch": epoch,
            "train_loss": round(train_loss, 5),
            "val_loss": round(val_loss, 5),
            "val_accuracy": round(val_accuracy, 5),
            "samples_per_s": round(throughput, 1),
        }
        history.append(row)
        if pipes is not None:
            pipes.log.info(
                f"epoch {epoch}/{job['epochs']}: train_loss={train_loss:.4f} "
                f"val_loss={val_loss:.4f} val_accuracy={val_accuracy:.4f} "
                f"samples/s={throughput:.0f}"
            )
    seconds = time.perf_counter() - started

    if pipes is not None:  # rank 0
        model_info = {
            "arch": job["arch"],
            "num_features": len(spec.feature_columns),
            "num_classes": len(spec.classes),
            "classes": spec.classes,
            "input_shape": spec.input_shape,
            "feature_columns": spec.feature_columns,
            "dataset_version": job["dataset_version"],
            "variant": "fp32",
            "dtype": "float32",
        }
        prefix = job["output_prefix"]
        digest = save_model(store, prefix, model.cpu(), model_info)
        store.write_json(f"{prefix}/history.json", history)
        pipes.report_asset_materialization(
            metadata={
                "model": {"raw_value": store.url(f"{prefix}/model.pt"), "type": "path"},
                "sha256": {"raw_value": digest, "type": "text"},
                "processes": {"raw_value": hvd.size(), "type": "int"},
                "epochs": {"raw_value": job["epochs"], "type": "int"},
                "val_accuracy": {"raw_value": history[-1]["val_accuracy"], "type": "float"},
                "val_loss": {"raw_value": history[-1]["val_loss"], "type": "float"},
                "samples_per_s": {"raw_value": history[-1]["samples_per_s"], "type": "float"},
                "train_seconds": {"raw_value": round(seconds, 2), "type": "float"},
                "history": {"raw_value": history, "type": "json"},
            }
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Lepton's Horovod training worker (one rank).")
    parser.add_argument("--artifacts-uri", required=True)
    parser.add_argument("--job-key", required=True, help="artifact key of the job's JSON")
    args = parser.parse_args(argv)
    # Horovod: initialize the collective runtime.
    hvd.init()
    store = ArtifactStore(args.artifacts_uri)
    job = store.read_json(args.job_key)
    with rank0_pipes() as pipes:
        train(store, job, pipes)


if __name__ == "__main__":
    main()

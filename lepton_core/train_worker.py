"""The Horovod training worker: one process per rank, launched by ``horovodrun``.

    horovodrun -np 2 --gloo python -m lepton_core.train_worker \
        --artifacts-uri file:///…/artifacts --job-key runs/<run>/train_job.json

Follows Horovod's canonical PyTorch recipe; every distributed line is marked ``# Horovod:``.
One departure: instead of a ``DistributedSampler`` over a split held whole, each rank streams
its own part of the split's Parquet row groups (``streaming.ShardStream``, reshuffled every
epoch with ``set_epoch``), so a rank's memory does not grow with the data.
It imports torch, Horovod and Lepton's Dagster-free core only (``dagster_pipes`` is Dagster's
small standalone protocol package), so a rank starts without Dagster's or GX's imports.
The model comes from the job's description (factory, kwargs, code_path), the loss from the
project's ``loss`` or the task's default.
Rank 0 alone opens the Dagster Pipes channel: it streams per-epoch metrics to the Dagster
log, writes a checkpoint every epoch, saves the model and reports the materialization.

A job may also be a tuning trial (``trial``: rank 0 reports each epoch's validation metric to
the study and every rank stops where its pruner says, ``tuning.py``) or a distilled student
(``distill``: the loss mixes a trained teacher's outputs with the labels, ``distill.py``).

A job that finds a checkpoint under its ``checkpoint_prefix`` (same dataset version, same
Dagster run or re-execution of it) resumes after the checkpoint's epoch instead of starting
over. Under elastic Horovod (``horovodrun --min-np/--max-np``) the same loop runs inside
``hvd.elastic.run`` and rolls back to the last epoch all ranks committed.
"""

import argparse
import contextlib
import copy
import hashlib
import io
import os
import random
import resource
import time
from collections.abc import Iterable, Iterator
from typing import Any

import horovod.torch as hvd
import torch
from dagster_pipes import DAGSTER_PIPES_CONTEXT_ENV_VAR, PipesContext, open_dagster_pipes
from torch import nn

from lepton_core.data import read_dataset_info, target_scaling
from lepton_core.distill import DistillationLoss
from lepton_core.models import build_model, load_model, save_model, torch_bytes
from lepton_core.spec import TrainingSettings
from lepton_core.store import ArtifactStore
from lepton_core.streaming import Batch, ShardStream, device_batches
from lepton_core.tasks import Loss, Task, significant, task_of
from lepton_core.usercode import resolve

MIN_IMPROVEMENT = 1e-4


def peak_rss_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def warmup_factor(step: int, warmup_steps: int, size: int) -> float:
    """Goyal et al.: ramp from the one-process rate to size × it over the warm-up steps."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return 1.0
    return 1.0 / size + (1.0 - 1.0 / size) * step / warmup_steps


def parameter_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def loader_workers(setting: int | None, cuda: bool) -> int:
    """Processes that read and encode a rank's batches. Unset: none on CPU (the cores train;
    measured in bench/stream_bench.py), on CUDA the rank's share of the cores less one for
    the training thread, at most 4."""
    if setting is not None:
        return setting
    if not cuda:
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // hvd.local_size() - 1))


def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    device: torch.device,
    loss_fn: Loss,
    task: Task,
    unit: float = 1.0,
) -> tuple[float, float]:
    """(mean loss, the task's metric) over the whole split, each rank scoring its shard; a
    regression's RMSE in the target's unit (``unit``: the scale of the encoded target)."""
    model.eval()
    loss_sum, metric_sum, count = 0.0, 0.0, 0
    with torch.no_grad():
        for *x, y in device_batches(batches, device):
            outputs = model(*x).float()
            loss_sum += float(loss_fn(outputs, y)) * len(y)
            metric_sum += task.metric_sums(outputs, y)
            count += len(y)
    # Horovod: sum the shard totals so every rank sees the global figures.
    totals = hvd.allreduce(
        torch.tensor([loss_sum, metric_sum, count], dtype=torch.float64), op=hvd.Sum, name="eval"
    )
    metric = task.metric_value(float(totals[1]), float(totals[2]), unit)
    return float(totals[0] / totals[2]), metric


def read_checkpoint(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """The checkpoint at ``key``, if any, loaded with weights_only=True."""
    if not store.exists(key):
        return None
    return torch.load(io.BytesIO(store.read_bytes(key)), weights_only=True)


def load_checkpoint(store: ArtifactStore, key: str) -> dict[str, Any] | None:
    """Rank 0's checkpoint, if any, sent to every rank."""
    state = read_checkpoint(store, key) if hvd.rank() == 0 else None
    # Horovod: every rank resumes from the same checkpoint (or none).
    return hvd.broadcast_object(state, root_rank=0, name="checkpoint")


@contextlib.contextmanager
def rank0_pipes() -> Iterator[PipesContext | None]:
    """The Dagster Pipes context on rank 0 when Dagster launched the job; else None.

    Only one rank may report to Dagster. Without Pipes (``horovodrun`` by hand, tests) the
    worker still trains, checkpoints and saves the model.
    """
    if hvd.rank() == 0 and DAGSTER_PIPES_CONTEXT_ENV_VAR in os.environ:
        with open_dagster_pipes() as pipes:
            yield pipes
    else:
        yield None


class Trainer:
    """Everything one rank needs for the epochs loop; state that a checkpoint carries."""

    def __init__(self, store: ArtifactStore, job: dict[str, Any], pipes: PipesContext | None):
        self.store, self.job, self.pipes = store, job, pipes
        self.is_root = hvd.rank() == 0
        self.model_info = job["model_info"]
        self.task = task_of(self.model_info["dataset_info"]["task"])
        code_path = self.model_info.get("code_path")
        self.loss_fn: Loss = (
            resolve(job["loss"], code_path, what="loss")
            if job.get("loss")
            else self.task.default_loss
        )
        seed_everything(job["seed"])

        # Horovod: pin the device to the local rank.
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.set_device(hvd.local_rank())
            self.device = torch.device("cuda", hvd.local_rank())
        else:
            self.device = torch.device("cpu")

        self.dataset = read_dataset_info(store, job["dataset_version"])
        self.target_unit = target_scaling(self.dataset["preprocessing"])[1]
        self.model = build_model(self.model_info)
        self.model.to(self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(job["amp"])
        self.use_amp = self.amp_dtype is not None and (self.cuda or job.get("amp_on_cpu", False))
        # fp16 autocast needs loss scaling; bf16 has fp32's range and does not.
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.use_amp and self.amp_dtype == torch.float16
        )
        # Horovod: the one-process learning rate is scaled by the number of processes below.
        # Any: prepare() swaps in Horovod's DistributedOptimizer, a class made at run time.
        self.optimizer: Any = torch.optim.Adam(self.model.parameters(), lr=job["learning_rate"])
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"val_loss": float("inf"), "epoch": 0, "model": None}
        self.bad_epochs = 0
        self.resumed_from = 0
        self.pruned = False
        # A tuning trial's rank 0 reports every epoch's metric to the study (optuna imported
        # only then).
        self.reporter: Any = None
        if job.get("trial") and self.is_root:
            from lepton_core.tuning import EpochReporter

            self.reporter = EpochReporter(job["trial"])
        # A distilled student learns from a trained teacher's outputs too (distill.py).
        self.teacher: nn.Module | None = None
        if job.get("distill"):
            self.teacher, self.distill_loss = self.load_teacher(job["distill"])

    def load_teacher(self, distill: dict[str, Any]) -> tuple[nn.Module, DistillationLoss]:
        teacher = load_model(self.store, distill["teacher"])[0].to(self.device).eval()
        teacher.requires_grad_(False)
        loss = DistillationLoss(self.task, self.loss_fn, distill["temperature"], distill["weight"])
        return teacher, loss

    def step_loss(self, x: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """The batch's training loss: the task's, or for a student the distillation loss."""
        outputs = self.model(*x).float()
        if self.teacher is None:
            return self.loss_fn(outputs, y)
        with torch.no_grad():
            taught = self.teacher(*x).float()
        return self.distill_loss(outputs, y, taught)

    # -- checkpoints -------------------------------------------------------------------
    @property
    def checkpoint_key(self) -> str:
        return f"{self.job['checkpoint_prefix']}/latest.pt"

    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "history": self.history,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        torch.set_rng_state(state["rng"]["torch"])
        random.setstate(state["rng"]["python"])
        self.resumed_from = self.epoch

    def save_checkpoint(self) -> None:
        if self.is_root:
            self.store.write_bytes(self.checkpoint_key, torch_bytes(self.state()))

    # -- the loop ----------------------------------------------------------------------
    def log(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)

    def prepare(self, elastic: bool = False) -> None:
        """Resume from a checkpoint, start every rank from rank 0's state, and wrap the
        optimizer. Elastic: no collective here, since a rank that joins a running job meets
        the others in ``hvd.elastic.run``'s state sync (which sends it rank 0's weights,
        optimizer and loop state), not here; rank 0 alone resumes from the checkpoint."""
        if elastic:
            checkpoint = read_checkpoint(self.store, self.checkpoint_key) if self.is_root else None
        else:
            checkpoint = load_checkpoint(self.store, self.checkpoint_key)
        if checkpoint is not None:
            self.restore(checkpoint)
            self.log(f"resuming from checkpoint after epoch {self.epoch}")
        if not elastic:
            # Horovod: start every rank from rank 0's weights and optimizer state.
            hvd.broadcast_parameters(self.model.state_dict(), root_rank=0)
            hvd.broadcast_optimizer_state(self.optimizer, root_rank=0)
        compression: Any = (
            hvd.Compression.fp16 if self.job["fp16_allreduce"] else hvd.Compression.none
        )
        # Horovod: average gradients over ranks at each step (fp16 on the wire if asked).
        self.optimizer = hvd.DistributedOptimizer(
            self.optimizer,
            named_parameters=self.model.named_parameters(),
            compression=compression,
        )

    def streams(self) -> tuple[ShardStream, ShardStream]:
        # Horovod: each rank streams its own part of the split's row groups (never the whole
        # split); set_epoch reshuffles them. Built per call so an elastic reset picks up the
        # new size and rank.
        workers = loader_workers(self.job.get("loader_workers"), self.cuda)

        def stream(split: str, batch_size: int, shuffle: bool) -> ShardStream:
            return ShardStream(
                self.store,
                self.dataset,
                split,
                batch_size,
                hvd.rank(),
                hvd.size(),
                shuffle=shuffle,
                seed=self.job["seed"],
                workers=workers,
                pin_memory=self.cuda,
            )

        return stream("train", self.job["batch_size"], shuffle=True), stream("val", 256, False)

    def train_epoch(self, loader: ShardStream) -> tuple[float, float]:
        """One pass over this rank's shard; (mean loss over all ranks, samples/s of the job)."""
        self.model.train()
        size, steps = hvd.size(), len(loader)
        warmup_steps = self.job["warmup_epochs"] * steps
        started, seen = time.perf_counter(), 0
        # Summed on the device: reading a loss each step would wait for the GPU every step.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, (*x, y) in enumerate(device_batches(loader, self.device)):
            step = self.epoch * steps + i
            for group in self.optimizer.param_groups:
                # Horovod: learning rate × size, reached after the warm-up.
                group["lr"] = (
                    self.job["learning_rate"] * size * warmup_factor(step, warmup_steps, size)
                )
            self.optimizer.zero_grad()
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp):
                loss = self.step_loss(x, y)
            self.scaler.scale(loss).backward()
            # Horovod: finish the gradient allreduce before the scaler looks at gradients.
            self.optimizer.synchronize()
            with self.optimizer.skip_synchronize():
                self.scaler.step(self.optimizer)
            self.scaler.update()
            loss_sum += loss.detach().double() * len(y)
            seen += len(y)
        loss_total = loss_sum.item()  # waits for the last step
        seconds = time.perf_counter() - started
        # Horovod: average the loss and add up throughput over all ranks.
        totals = hvd.allreduce(
            torch.tensor([loss_total, seen, seen / max(seconds, 1e-9)], dtype=torch.float64),
            op=hvd.Sum,
            name="train_totals",
        )
        return float(totals[0] / totals[1]), float(totals[2])

    def gpu_memory(self) -> dict[str, float]:
        """Rank 0's peak GPU memory so far (MiB), on CUDA."""
        if not self.cuda:
            return {}
        return {"gpu_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}

    def run(self, commit: Any = None) -> None:
        """Epochs from the one after the last completed, until done or stopped early."""
        train_stream, val_stream = self.streams()
        patience = self.job["patience"]
        while self.epoch < self.job["epochs"]:
            # Horovod: a different shuffle of the shards every epoch.
            train_stream.set_epoch(self.epoch)
            train_loss, throughput = self.train_epoch(train_stream)
            val_loss, val_metric = evaluate(
                self.model, val_stream, self.device, self.loss_fn, self.task, self.target_unit
            )
            self.epoch += 1
            # Horovod: every rank's peak memory, so growth with the data shows per rank.
            rss = hvd.allgather_object(round(peak_rss_mb(), 1), name="peak_rss")
            self.history.append(
                {
                    "epoch": self.epoch,
                    "train_loss": significant(train_loss),
                    "val_loss": significant(val_loss),
                    self.task.metric: significant(val_metric),
                    "samples_per_s": round(throughput, 1),
                    "rank_peak_rss_mb": rss,
                    **self.gpu_memory(),
                }
            )
            if val_loss < self.best["val_loss"] - MIN_IMPROVEMENT:
                self.best = {
                    "val_loss": val_loss,
                    "epoch": self.epoch,
                    "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
                }
                self.bad_epochs = 0
            else:
                self.bad_epochs += 1
            self.log(
                f"epoch {self.epoch}/{self.job['epochs']}: train_loss={train_loss:.4f} "
                f"val_loss={val_loss:.4f} {self.task.metric}={val_metric:.4f} "
                f"samples/s={throughput:.0f}"
            )
            self.save_checkpoint()
            if commit is not None:
                commit()
            if self.prune(val_metric):
                self.log(f"trial pruned after epoch {self.epoch}")
                break
            if patience and self.bad_epochs >= patience:
                self.log(
                    f"early stop: no val_loss gain for {patience} epochs; "
                    f"keeping epoch {self.best['epoch']}"
                )
                break

    def prune(self, val_metric: float) -> bool:
        """A tuning trial: whether the study's pruner stops it after this epoch (rank 0 asks,
        every rank learns the answer)."""
        if not self.job.get("trial"):
            return False
        stop = self.reporter.report(self.epoch, val_metric) if self.is_root else None
        # Horovod: every rank stops at the same epoch.
        self.pruned = bool(hvd.broadcast_object(stop, root_rank=0, name="prune"))
        return self.pruned

    def finish(self) -> None:
        if self.best["model"] is not None:
            self.model.load_state_dict(self.best["model"])
        # Horovod: every rank must end with the same parameters and at the same point of the
        # loop (epoch, best epoch, epochs recorded); a divergence is a bug.
        digests = hvd.allgather_object(parameter_digest(self.model), name="param_digest")
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks ended with different parameters: {digests}")
        loop = (self.epoch, self.best["epoch"], len(self.history))
        ends = hvd.allgather_object(loop, name="loop_state")
        if len(set(ends)) != 1:
            raise RuntimeError(f"ranks ended at different (epoch, best epoch, history): {ends}")
        if not self.is_root:
            return
        job = self.job
        training = {k: job[k] for k in TrainingSettings.model_fields}
        model_info = {**self.model_info, "variant": "fp32", "dtype": "float32"}
        model_info["training"] = training
        prefix = job["output_prefix"]
        digest = save_model(self.store, prefix, self.model.cpu(), model_info)
        self.store.write_json(f"{prefix}/history.json", self.history)
        if job.get("trial"):
            best = next((h for h in self.history if h["epoch"] == self.best["epoch"]), None)
            if best is None:
                raise RuntimeError("no epoch had a finite validation loss: nothing to score")
            outcome = {"pruned": self.pruned, "value": best[self.task.metric]}
            self.store.write_json(f"{prefix}/trial.json", outcome)
        if self.pipes is None:
            return
        last = self.history[-1]
        self.pipes.report_asset_materialization(
            metadata={
                "model": {"raw_value": self.store.url(f"{prefix}/model.pt"), "type": "path"},
                "sha256": {"raw_value": digest, "type": "text"},
                "processes": {"raw_value": hvd.size(), "type": "int"},
                "epochs_run": {"raw_value": self.epoch, "type": "int"},
                "best_epoch": {"raw_value": self.best["epoch"], "type": "int"},
                "resumed_from_epoch": {"raw_value": self.resumed_from, "type": "int"},
                self.task.metric: {"raw_value": last[self.task.metric], "type": "float"},
                "val_loss": {"raw_value": self.best["val_loss"], "type": "float"},
                "samples_per_s": {"raw_value": last["samples_per_s"], "type": "float"},
                "rank_param_sha256": {"raw_value": digests, "type": "json"},
                "history": {"raw_value": self.history, "type": "json"},
            }
        )


def train(store: ArtifactStore, job: dict[str, Any], pipes: PipesContext | None) -> None:
    trainer = Trainer(store, job, pipes)
    elastic = os.environ.get("HOROVOD_ELASTIC") == "1"
    trainer.prepare(elastic)
    if elastic:
        # Horovod: elastic mode commits after every epoch; a lost or added rank rolls every
        # rank back to the last commit and rebuilds the shards for the new size. The state
        # carries what early stopping decides by (history, best weights, epochs without a
        # gain), so a rank that joins stops at the same epoch as the others. Copied both ways:
        # Horovod's ObjectState keeps references, and the trainer appends to its history.
        carried = ("epoch", "history", "best", "bad_epochs")
        state = hvd.elastic.TorchState(
            trainer.model,
            trainer.optimizer,
            **{k: copy.deepcopy(getattr(trainer, k)) for k in carried},
        )

        @hvd.elastic.run
        def elastic_run(state: Any) -> None:
            for name in carried:
                setattr(trainer, name, copy.deepcopy(getattr(state, name)))

            def commit() -> None:
                for name in carried:
                    setattr(state, name, copy.deepcopy(getattr(trainer, name)))
                state.commit()

            trainer.run(commit)

        elastic_run(state)
    else:
        trainer.run()
    trainer.finish()


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

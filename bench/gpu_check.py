"""The one GPU check: the project's training worker on CUDA against a plain PyTorch loop.

    bash bench/gpu_check.sh        (builds Horovod with NCCL if needed; skips without a GPU)

Two models, each in three precisions (``amp`` off, bf16, fp16), batch 256:

  cnn     the built-in CNN on the digits (8x8, repeated to 60,000 rows with fresh ids);
  resnet  the built-in ResNet on 50,000 synthetic 3x32x32 images (10 classes: stripes of a
          class's frequency in a class's channel under noise), stored as ingestion stores
          images.

For each, three runs over the same batches (one warm-up epoch, then two timed):

  worker     ``lepton_core.train_worker`` under ``horovodrun``, one process on the GPU: the
             shard stream read by loader worker processes, batches copied ahead on a side
             CUDA stream; samples/s of the timed epochs, final validation accuracy, peak GPU
             memory (from the worker's history);
  stream     a plain loop (no Horovod) over the same stream, fed the same way;
  preloaded  the same plain loop over the same batches already on the GPU.

Printed per run: samples/s, mean GPU utilisation (nvidia-smi, sampled every 100 ms; for the
worker over the whole process, start-up included), peak GPU memory; then the ratios
worker/stream (what Horovod and the worker's bookkeeping cost; goal >= 0.95) and
stream/preloaded (what the input pipeline costs; goal >= 0.95), and whether bf16 and fp16 end
within 1 point of fp32's accuracy. Needs torch with CUDA, Horovod, polars, pyarrow, pydantic,
fsspec, dagster-pipes and scikit-learn (the digits); not Dagster.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from statistics import fmean
from typing import Any

import numpy as np
import polars as pl
import torch

from lepton_assets.demo import digits_day
from lepton_core.data import build_dataset, read_dataset_info
from lepton_core.images import IMAGE_PIXELS
from lepton_core.models import BUILTIN, build_model, model_description
from lepton_core.spec import (
    DIGITS_SPEC,
    DatasetSpec,
    ImageSpec,
    ModelRef,
    Project,
    TrainingSettings,
    worker_job,
)
from lepton_core.store import ArtifactStore
from lepton_core.streaming import Batch, ShardStream, device_batches

ROOT = Path(__file__).resolve().parents[1]
BATCH, EPOCHS = 256, 3  # the first epoch is warm-up
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def synthetic_images(rows: int) -> tuple[DatasetSpec, pl.DataFrame]:
    """Class k: stripes of frequency 1 + k // 3 across the image, in channel k % 3, at a random
    phase, under noise (what convolutions and pooling can learn)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, rows)
    x = np.arange(32) / 32
    phase = rng.uniform(0, 2 * np.pi, (rows, 1))
    stripes = 60 * np.sin(2 * np.pi * (1 + labels[:, None] // 3) * x + phase)  # rows x 32
    images = 128 + rng.normal(0, 30, (rows, 3, 32, 32))
    images[np.arange(rows), labels % 3] += stripes[:, None, :]
    pixels = np.clip(images, 0, 255).astype(np.uint8).reshape(rows, -1)
    spec = DatasetSpec(
        name="synthetic", id_column="id", label_column="label", classes=list(range(10)),
        image=ImageSpec(column="path", size=(32, 32), channels=3),
    )  # fmt: skip
    frame = pl.DataFrame(
        {
            "id": [f"s{i}" for i in range(rows)],
            "label": labels,
            "path": [f"{i}.png" for i in range(rows)],
            IMAGE_PIXELS: pl.Series([p.tobytes() for p in pixels], dtype=pl.Binary),
        }
    )
    return spec, frame


def build(store: ArtifactStore, spec: DatasetSpec, frame: pl.DataFrame) -> dict[str, Any]:
    store.write_parquet(f"validated/{spec.name}.parquet", frame)
    version, _ = build_dataset(store, spec, [{"partition": spec.name, "sha256": "gpu-check"}])
    return read_dataset_info(store, version)


def description(info: dict[str, Any], arch: str) -> dict[str, Any]:
    """The built-in ``arch`` on this dataset, described as trained_model describes a model."""
    spec = DatasetSpec.model_validate(info["spec"])
    return model_description(
        Project(dataset=spec, model=ModelRef(factory=f"{BUILTIN}{arch}")), info
    )


class Utilisation:
    """nvidia-smi's GPU utilisation, sampled every 100 ms while the block runs."""

    def __enter__(self) -> "Utilisation":
        self.samples: list[float] = []
        self.process = None
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self.process = subprocess.Popen(
                [*query, "-lms", "100", "-i", str(torch.cuda.current_device())],
                stdout=subprocess.PIPE,
                text=True,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            out, _ = self.process.communicate()
            self.samples = [float(v) for v in out.split() if v.strip().isdigit()]

    @property
    def mean(self) -> float | None:
        return round(fmean(self.samples), 1) if self.samples else None


def worker_run(store: ArtifactStore, info: dict[str, Any], arch: str, amp: str) -> dict:
    """The project's worker under horovodrun (1 process); its history's figures."""
    prefix = f"runs/{arch}-{amp}"
    settings = TrainingSettings.model_validate(
        {"epochs": EPOCHS, "batch_size": BATCH, "patience": 0, "amp": amp}
    )
    job = worker_job(settings, description(info, arch), prefix)
    store.write_json(f"{prefix}/job.json", job)
    worker = ["-m", "lepton_core.train_worker", "--artifacts-uri", store.uri]
    horovodrun = str(Path(sys.executable).parent / "horovodrun")
    command = [horovodrun, "-np", "1", "--gloo", "-H", "localhost:1", sys.executable, "-P"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with Utilisation() as use:
        subprocess.run(
            [*command, *worker, "--job-key", f"{prefix}/job.json"],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    history = store.read_json(f"{prefix}/history.json")
    return {
        "samples_per_s": round(fmean(h["samples_per_s"] for h in history[1:]), 1),
        "gpu_util_pct": use.mean,
        "peak_gpu_mb": max(h.get("gpu_peak_mb", 0) for h in history),
        "accuracy": history[-1]["val_accuracy"],
    }


def plain_run(info: dict[str, Any], arch: str, amp: str, epochs: Callable[[int], Iterable[Batch]]):
    """A plain PyTorch loop (Adam, autocast, fp16 loss scaling) over ``epochs(epoch)``."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model(description(info, arch)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dtype = AMP[amp]
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    torch.cuda.reset_peak_memory_stats()
    rates = []
    with Utilisation() as use:
        for epoch in range(EPOCHS):
            torch.cuda.synchronize()
            started, seen = time.perf_counter(), 0
            for *x, y in epochs(epoch):
                optimizer.zero_grad()
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    loss = torch.nn.functional.cross_entropy(model(*x).float(), y)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                seen += len(y)
            torch.cuda.synchronize()
            rates.append(seen / (time.perf_counter() - started))
    return {
        "samples_per_s": round(fmean(rates[1:]), 1),
        "gpu_util_pct": use.mean,
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
    }


def check(store: ArtifactStore, info: dict[str, Any], arch: str) -> dict[str, Any]:
    device = torch.device("cuda")
    workers = max(1, min(4, (os.cpu_count() or 1) - 1))  # as the worker's default for 1 rank
    stream = ShardStream(store, info, "train", BATCH, 0, 1, shuffle=True, seed=0,
                         workers=workers, pin_memory=True)  # fmt: skip

    def streamed(epoch: int) -> Iterable[Batch]:
        stream.set_epoch(epoch)
        return device_batches(stream, device)

    here = ShardStream(store, info, "train", BATCH, 0, 1, shuffle=True, seed=0)
    on_gpu = [[t.to(device) for t in batch] for batch in here]
    results: dict[str, Any] = {}
    for amp in AMP:
        worker = worker_run(store, info, arch, amp)
        plain = plain_run(info, arch, amp, streamed)
        preloaded = plain_run(info, arch, amp, lambda epoch: on_gpu)
        results[amp] = {
            "worker": worker,
            "stream": plain,
            "preloaded": preloaded,
            "worker/stream": round(worker["samples_per_s"] / plain["samples_per_s"], 3),
            "stream/preloaded": round(plain["samples_per_s"] / preloaded["samples_per_s"], 3),
        }
    return results


def main() -> None:
    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device visible to torch")
        return
    name = torch.cuda.get_device_name()
    print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"{os.cpu_count()} cores; batch {BATCH}, {EPOCHS} epochs (first not timed)")  # fmt: skip
    started = time.perf_counter()
    report: dict[str, Any] = {"device": name}
    with tempfile.TemporaryDirectory() as tmp:
        store = ArtifactStore(f"file://{tmp}")
        datasets = {
            "cnn": build(store, DIGITS_SPEC, digits_day(60_000, "g")),
            "resnet": build(store, *synthetic_images(50_000)),
        }
        for arch, info in datasets.items():
            report[arch] = results = check(store, info, arch)
            fp32 = results["off"]["worker"]["accuracy"]
            for amp, r in results.items():
                w, s, p = r["worker"], r["stream"], r["preloaded"]
                close = abs(w["accuracy"] - fp32) <= 0.01
                print(f"{arch:6s} amp={amp:4s} worker {w['samples_per_s']:9,.0f}/s "
                      f"(util {w['gpu_util_pct']}%, {w['peak_gpu_mb']} MB, acc {w['accuracy']:.4f}"
                      f"{'' if close else ' MORE THAN 1 POINT FROM FP32'}) | stream "
                      f"{s['samples_per_s']:9,.0f}/s (util {s['gpu_util_pct']}%) | preloaded "
                      f"{p['samples_per_s']:9,.0f}/s (util {p['gpu_util_pct']}%) | "
                      f"worker/stream {r['worker/stream']:.3f} stream/preloaded "
                      f"{r['stream/preloaded']:.3f}")  # fmt: skip
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

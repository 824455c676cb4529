"""What the shard stream delivers with no model, against the same rows already in memory as
tensors, side by side in one run; then what the stream costs a CPU training epoch.

    .venv/bin/python bench/stream_bench.py [--scale 1.0]

Three datasets, each one validated day built into a dataset version as training_dataset
builds it: ``tabular`` (64 numeric features, 2 categorical columns; 200,000 rows), ``3x32x32``
(RGB images as ingestion stores them, decoded pixels; 50,000 rows) and ``3x224x224`` (1,000
rows). For each, one epoch of the train split at batch 256:

  stream  ``ShardStream``, what a training rank iterates in its first epoch: Parquet row groups
          read, encoded to tensors and shuffled (with (seed, epoch)), one rank's equal part;
  memory  the same rank's rows already as tensors (``load_tensors``), batches gathered by a
          shuffled index, as a plain PyTorch loop over preloaded data would.

Each runs on 1 process and on one process per core at once (each a rank of its own part, one
torch thread each); printed are samples/s and MB/s of input tensors over all processes. Goal:
at least 4,000 samples/s of 3x32x32 per core, scaling with cores.

Then a CPU training epoch over the whole train split (MLP on tabular; the built-in CNN on a
12,000-row 3x32x32 dataset), one process, every core, fed from memory (loaded before the clock
starts) against fed by the stream: its first epoch (every row group read and encoded), a
later epoch (row groups from the stream's cache of encoded row groups where the part fits in
it, as both parts here do), and a later epoch read by one worker process
(``loader_workers: 1``; the CPU default is 0). The stream's cost is the difference, as a share
of the in-memory epoch (goal: at most 5 %), and, less noisy on a busy machine, the time the
loop spent waiting for its next batch (where nothing overlaps, as on these CPUs, that is the
stream's own work). Each feed runs four times, in alternating order; the fastest counts.
"""

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

import numpy as np
import polars as pl
import torch

from lepton_core.data import build_dataset, load_tensors, read_dataset_info
from lepton_core.images import IMAGE_PIXELS
from lepton_core.models import BUILTIN, build_model, model_description
from lepton_core.spec import DatasetSpec, ImageSpec, ModelRef, Project
from lepton_core.store import ArtifactStore
from lepton_core.streaming import ShardStream

BATCH = 256
ROUNDS = 4  # tries of each feed, alternating order
CORES = os.cpu_count() or 1
CLASSES = list(range(10))


def tabular(rows: int) -> tuple[DatasetSpec, pl.DataFrame]:
    rng = np.random.default_rng(0)
    numeric = {f"x{i:02d}": rng.normal(size=rows) for i in range(64)}
    spec = DatasetSpec(
        name="tabular", id_column="id", label_column="label", classes=CLASSES,
        feature_columns=list(numeric), categorical_columns=["region", "plan"],
    )  # fmt: skip
    frame = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "label": rng.integers(0, 10, rows),
            **numeric,
            "region": rng.choice(["n", "s", "e", "w"], rows),
            "plan": rng.choice(["a", "b", "c"], rows),
        }
    )
    return spec, frame


def images(rows: int, side: int) -> tuple[DatasetSpec, pl.DataFrame]:
    rng = np.random.default_rng(0)
    spec = DatasetSpec(
        name=f"images{side}", id_column="id", label_column="label", classes=CLASSES,
        image=ImageSpec(column="path", size=(side, side), channels=3),
    )  # fmt: skip
    pixels = rng.integers(0, 256, (rows, 3 * side * side), dtype=np.uint8)
    frame = pl.DataFrame(
        {
            "id": [f"r{i}" for i in range(rows)],
            "label": rng.integers(0, 10, rows),
            "path": [f"{i}.png" for i in range(rows)],
            IMAGE_PIXELS: pl.Series([p.tobytes() for p in pixels], dtype=pl.Binary),
        }
    )
    return spec, frame


def build(uri: str, spec: DatasetSpec, frame: pl.DataFrame) -> str:
    store = ArtifactStore(uri)
    store.write_parquet("validated/2026-01-01.parquet", frame)
    return build_dataset(store, spec, [{"partition": "2026-01-01", "sha256": "bench"}])[0]


def stream_epoch(uri: str, version: str, rank: int, size: int) -> tuple[int, int, float]:
    torch.set_num_threads(1)
    store = ArtifactStore(uri)
    stream = ShardStream(store, read_dataset_info(store, version), "train", BATCH, rank, size,
                         shuffle=True)  # fmt: skip
    started, rows, size_bytes = time.perf_counter(), 0, 0
    for batch in stream:
        rows += len(batch[-1])
        size_bytes += sum(t.nbytes for t in batch[:-1])
    return rows, size_bytes, time.perf_counter() - started


def memory_epoch(uri: str, version: str, rank: int, size: int) -> tuple[int, int, float]:
    torch.set_num_threads(1)
    inputs, target = load_tensors(ArtifactStore(uri), version, "train")
    per = -(-len(target) // size)
    mine = torch.arange(rank * per, min((rank + 1) * per, len(target)))
    order = mine[torch.randperm(len(mine), generator=torch.Generator().manual_seed(rank))]
    started, rows, size_bytes = time.perf_counter(), 0, 0
    for first in range(0, len(order), BATCH):
        index = order[first : first + BATCH]
        batch = [x[index] for x in inputs]
        rows += len(target[index])
        size_bytes += sum(t.nbytes for t in batch)
    return rows, size_bytes, time.perf_counter() - started


def run(kind: str, uri: str, version: str, processes: int) -> tuple[float, float]:
    """(samples/s, MB/s) over ``processes`` ranks running at once."""
    work = stream_epoch if kind == "stream" else memory_epoch
    with mp.get_context("spawn").Pool(processes) as pool:
        results = pool.starmap(work, [(uri, version, r, processes) for r in range(processes)])
    seconds = max(r[2] for r in results)
    return sum(r[0] for r in results) / seconds, sum(r[1] for r in results) / seconds / 1e6


def train_epoch(model: torch.nn.Module, batches: Any) -> tuple[float, float]:
    """(seconds of the epoch, seconds of it spent waiting for the next batch)."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    source, waited = iter(batches), 0.0
    started = time.perf_counter()
    while True:
        asked = time.perf_counter()
        batch = next(source, None)
        waited += time.perf_counter() - asked
        if batch is None:
            return time.perf_counter() - started, waited
        *x, y = batch
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(*x), y).backward()
        optimizer.step()


def epoch_cost(uri: str, version: str, arch: str) -> dict[str, tuple[float, float]]:
    """(seconds, seconds waiting for batches) of one training epoch over the whole train split,
    one process, every core, fed from memory (loaded before the clock starts), by the stream
    in the training process, and by the stream's one worker process (started, and the stream
    read once, before the clock); the fastest of ``ROUNDS`` alternating tries of each."""
    torch.set_num_threads(CORES)
    store = ArtifactStore(uri)
    info = read_dataset_info(store, version)
    spec = DatasetSpec.model_validate(info["spec"])
    description = model_description(
        Project(dataset=spec, model=ModelRef(factory=f"{BUILTIN}{arch}")), info
    )
    inputs, target = load_tensors(store, version, "train")
    order = torch.randperm(len(target), generator=torch.Generator().manual_seed(0))
    preloaded = [
        [*(x[order[i : i + BATCH]] for x in inputs), target[order[i : i + BATCH]]]
        for i in range(0, len(target), BATCH)
    ]

    def stream(workers: int = 0) -> ShardStream:
        return ShardStream(store, info, "train", BATCH, 0, 1, shuffle=True, workers=workers)

    warm, worker = stream(), stream(workers=1)
    for ready in (warm, worker):
        for _ in ready:  # fills the cache (and starts the worker process); epoch 1 is timed
            pass
        ready.set_epoch(1)
    feeds = {"memory": lambda: preloaded, "cold": stream, "warm": lambda: warm,
             "worker": lambda: worker}  # fmt: skip
    times: dict[str, tuple[float, float]] = {}
    for name in [*feeds, *reversed(feeds)] * (ROUNDS // 2):
        torch.manual_seed(0)
        measured = train_epoch(build_model(description), feeds[name]())
        times[name] = min(times.get(name, measured), measured)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0, help="rows as a share of the default")
    args = parser.parse_args()
    datasets = {
        "tabular": tabular(int(200_000 * args.scale)),
        "3x32x32": images(int(50_000 * args.scale), 32),
        "3x224x224": images(int(1_000 * args.scale), 224),
    }
    print(f"{CORES} cores; torch {torch.__version__}; batch {BATCH}; train split ~80 % of rows")
    with tempfile.TemporaryDirectory() as tmp:
        versions: dict[str, tuple[str, str]] = {}
        for name, (spec, frame) in datasets.items():
            uri = f"file://{tmp}/{name}"
            versions[name] = uri, build(uri, spec, frame)
        for name, (uri, version) in versions.items():
            for processes in sorted({1, CORES}):
                stream = run("stream", uri, version, processes)
                memory = run("memory", uri, version, processes)
                print(f"{name:10s} {processes} proc: stream {stream[0]:10,.0f} samples/s "
                      f"{stream[1]:8,.0f} MB/s | memory {memory[0]:10,.0f} samples/s "
                      f"{memory[1]:8,.0f} MB/s | stream/memory {stream[0] / memory[0]:.2f}; "
                      f"stream per process {stream[0] / processes:,.0f} samples/s")  # fmt: skip
        small = f"file://{tmp}/small"
        spec, frame = images(int(12_000 * args.scale), 32)
        versions["3x32x32, 12k rows"] = small, build(small, spec, frame)
        for name, arch in (("tabular", "mlp"), ("3x32x32, 12k rows", "cnn")):
            uri, version = versions[name]
            times = epoch_cost(uri, version, arch)
            memory = times["memory"][0]
            cost = {k: f"{total:.2f} s ({100 * (total / memory - 1):+.1f} %; waiting for "
                       f"batches {waited:.3f} s, {100 * waited / memory:.1f} %)"
                    for k, (total, waited) in times.items()}  # fmt: skip
            print(f"CPU epoch, {arch} on {name}: from memory {cost['memory']}; stream, "
                  f"first epoch {cost['cold']}, later epoch {cost['warm']}, later epoch read "
                  f"by 1 worker process {cost['worker']}")  # fmt: skip


if __name__ == "__main__":
    main()

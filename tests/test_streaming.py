"""A rank's stream over row groups of a split's shards: coverage, equal steps, shuffling,
bounded reads, and a built dataset split into day shards."""

import polars as pl
import pytest
import torch

from lepton_core import data
from lepton_core.data import build_dataset, load_split, read_dataset_info
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore
from lepton_core.streaming import ShardStream, device_batches, rebatch

SPEC = DatasetSpec(
    name="t", id_column="id", label_column="y", task="regression", feature_columns=["x"]
)


def write_days(store: ArtifactStore, days: int, rows: int) -> list[dict]:
    manifests = []
    for d in range(days):
        day = f"2026-01-{d + 1:02d}"
        ids = [f"{day}-{i}" for i in range(rows)]
        frame = pl.DataFrame({"id": ids, "x": [float(d * rows + i) for i in range(rows)]})
        frame = frame.with_columns(pl.col("x").alias("y"))
        digest = store.write_parquet(f"validated/{day}.parquet", frame)
        manifests.append({"partition": day, "sha256": digest})
    return manifests


@pytest.fixture
def dataset(artifacts: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 40)  # many row groups from small days
    version, _ = build_dataset(artifacts, SPEC, write_days(artifacts, days=3, rows=400))
    return read_dataset_info(artifacts, version)


def values(stream: ShardStream) -> list[float]:
    """Each row's identity: its x (equal to its raw y; the stream's target is standardized)."""
    return [v for x, _ in stream for v in x[:, 0].tolist()]


def test_each_day_is_one_shard_of_40_row_groups(artifacts: ArtifactStore, dataset: dict):
    assert [p.split("/")[1][:10] for p in dataset["shards"]] == [
        "2026-01-01",
        "2026-01-02",
        "2026-01-03",
    ]
    train = ShardStream(artifacts, dataset, "train", 32, 0, 1, shuffle=False)
    assert train.rows == dataset["rows"]["train"]
    assert {rows for *_, rows in train.groups} <= set(range(1, 41))


def test_ranks_score_every_row_once_without_shuffle(artifacts: ArtifactStore, dataset: dict):
    whole = sorted(load_split(artifacts, dataset["version"], "val")["y"].to_list())
    parts = [ShardStream(artifacts, dataset, "val", 7, r, 3, shuffle=False) for r in range(3)]
    assert sorted(v for p in parts for v in values(p)) == whole


def test_ranks_take_equal_steps_and_together_cover_the_split(
    artifacts: ArtifactStore, dataset: dict
):
    rows = dataset["rows"]["train"]
    streams = [ShardStream(artifacts, dataset, "train", 16, r, 3, shuffle=True) for r in range(3)]
    seen = [values(s) for s in streams]
    steps = [sum(1 for _ in s) for s in streams]
    assert len(set(steps)) == 1 and steps[0] == len(streams[0])
    assert all(len(v) == -(-rows // 3) for v in seen)  # ceil: the last rank wraps round
    everything = [v for part in seen for v in part]
    assert set(everything) == set(load_split(artifacts, dataset["version"], "train")["y"])
    assert len(everything) - len(set(everything)) == -(-rows // 3) * 3 - rows


def test_the_shuffle_is_seeded_per_epoch(artifacts: ArtifactStore, dataset: dict):
    stream = ShardStream(artifacts, dataset, "train", 16, 0, 2, shuffle=True, seed=3)
    first = values(stream)
    assert values(stream) == first
    stream.set_epoch(1)
    second = values(stream)
    assert second != first
    again = ShardStream(artifacts, dataset, "train", 16, 0, 2, shuffle=True, seed=3)
    again.set_epoch(1)
    assert values(again) == second
    other_seed = ShardStream(artifacts, dataset, "train", 16, 0, 2, shuffle=True, seed=4)
    assert values(other_seed) != first


def test_a_seeded_epoch_gives_the_same_rows_in_the_same_order_as_before(
    artifacts: ArtifactStore, dataset: dict
):
    """Pinned: what a seeded training run is fed (how a chunk is cut and shuffled may get
    faster, never different)."""
    stream = ShardStream(artifacts, dataset, "train", 8, 1, 2, shuffle=True, seed=3)
    stream.set_epoch(2)
    first = [171.0, 351.0, 255.0, 698.0, 277.0, 169.0, 272.0, 328.0, 276.0, 198.0, 326.0, 259.0]
    assert values(stream)[:12] == first


def test_a_rank_holds_at_most_its_buffer_of_row_groups(
    artifacts: ArtifactStore, dataset: dict, monkeypatch: pytest.MonkeyPatch
):
    stream = ShardStream(artifacts, dataset, "train", 16, 0, 1, shuffle=True, buffer_groups=2)
    held: list[int] = []
    chunk = stream.chunk

    def counted(epoch: int, index: int) -> list[torch.Tensor]:
        tensors = chunk(epoch, index)
        held.append(len(tensors[0]))
        return tensors

    monkeypatch.setattr(stream, "chunk", counted)
    batches = list(stream)
    assert max(held) <= 2 * 40 and sum(held) == stream.rows
    assert all(len(b[0]) == 16 for b in batches[:-1])
    assert isinstance(batches[0][0], torch.Tensor) and batches[0][0].shape[1:] == (1,)


def test_a_part_within_the_cache_is_read_once_and_a_larger_one_is_not_kept(
    artifacts: ArtifactStore, dataset: dict, monkeypatch: pytest.MonkeyPatch
):
    read = artifacts.read_row_group
    calls: list[tuple[str, int]] = []
    monkeypatch.setattr(
        artifacts, "read_row_group", lambda k, i: calls.append((k, i)) or read(k, i)
    )
    small = ShardStream(artifacts, dataset, "train", 16, 0, 1, shuffle=True)
    groups = len(small.groups)
    epochs = []
    for epoch in range(3):
        small.set_epoch(epoch)
        epochs.append(values(small))
    assert len(calls) == groups and len(set(calls)) == groups
    calls.clear()
    # Two row groups' worth of bytes (x and the target, float32, 40 rows each): no part fits.
    limit = 2 * 40 * 2 * 4
    large = ShardStream(artifacts, dataset, "train", 16, 0, 1, shuffle=True, cache_bytes=limit)
    for epoch in range(3):
        large.set_epoch(epoch)
        assert values(large) == epochs[epoch]  # the cache changes what is read, not the rows
    assert len(calls) > groups and large.cache.bytes <= limit and len(large.cache.held) == 2


def test_worker_processes_give_the_same_batches_byte_for_byte(
    artifacts: ArtifactStore, dataset: dict
):
    """Reading in two forkserver worker processes (kept across epochs) changes nothing: the
    same batches, in the same order, with the same bytes, every epoch; equal steps too."""

    def epochs(stream: ShardStream) -> list[list[bytes]]:
        seen = []
        for epoch in range(2):
            stream.set_epoch(epoch)
            seen.append([b"".join(t.numpy().tobytes() for t in batch) for batch in stream])
        return seen

    kwargs = {"shuffle": True, "seed": 5, "buffer_groups": 2}
    here = ShardStream(artifacts, dataset, "train", 24, 1, 2, **kwargs)
    workers = ShardStream(artifacts, dataset, "train", 24, 1, 2, workers=2, **kwargs)
    expected = epochs(here)
    assert epochs(workers) == expected
    assert expected[0] != expected[1] and len(expected[0]) == len(workers) == 20
    assert workers.loader is not None and workers.loader.num_workers == 2


def test_batches_are_cut_across_chunks_in_order():
    chunks = [[torch.arange(0, 5)], [torch.arange(5, 7)], [torch.arange(7, 14)]]
    batches = [b[0].tolist() for b in rebatch(chunks, 4, pin=False)]
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13]]
    exact = [b[0].tolist() for b in rebatch([[torch.arange(3)], [torch.arange(3, 6)]], 3, False)]
    assert exact == [[0, 1, 2], [3, 4, 5]]


def test_cpu_batches_pass_through_to_the_device_unchanged():
    batches = [[torch.arange(4), torch.ones(4)], [torch.arange(2), torch.zeros(2)]]
    moved = list(device_batches(batches, torch.device("cpu")))
    expected = [[[0, 1, 2, 3], [1.0] * 4], [[0, 1], [0.0] * 2]]
    assert [[t.tolist() for t in b] for b in moved] == expected


@pytest.mark.gpu
def test_batches_reach_the_gpu_through_the_side_stream_in_order():
    batches = [[torch.arange(i, i + 1000).pin_memory()] for i in range(0, 10_000, 1000)]
    moved = list(device_batches(batches, torch.device("cuda")))
    assert all(b[0].device.type == "cuda" for b in moved)
    assert torch.cat([b[0] for b in moved]).cpu().tolist() == list(range(10_000))


def test_a_retrain_splits_only_the_new_days(artifacts: ArtifactStore):
    days = write_days(artifacts, days=3, rows=200)
    _, first = build_dataset(artifacts, SPEC, days[:2])
    before = {k: v for k, v in artifacts.files("shards").items()}
    _, second = build_dataset(artifacts, SPEC, days)
    after = artifacts.files("shards")
    assert second["shards"][:2] == first["shards"]
    assert {k: after[k] for k in before} == before  # not rewritten
    assert len(after) - len(before) == 4  # the new day's train/val/test and shard.json


def test_statistics_from_shards_equal_those_of_the_whole_train_split(
    artifacts: ArtifactStore, dataset: dict
):
    train = load_split(artifacts, dataset["version"], "train")
    numeric = dataset["preprocessing"]["numeric"]
    assert numeric["fill"] == [train["x"].median()]
    assert numeric["mean"][0] == pytest.approx(train["x"].mean(), rel=1e-12)
    assert numeric["std"][0] == pytest.approx(train["x"].std(), rel=1e-12)

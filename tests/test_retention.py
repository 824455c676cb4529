"""Retention: the artifact store drops what nothing needs, keeps what anything names."""

import os
from pathlib import Path

import pytest

from lepton_assets.cli import main
from lepton_core.registry import promote
from lepton_core.retention import retention_plan
from lepton_core.store import ArtifactStore

VERSIONS = ["v1", "v2", "v3", "v4", "v5"]  # oldest first


def shards(version: str) -> list[str]:
    return ["shards/d0-x", f"shards/d{version[1]}-x"]


def fill(store: ArtifactStore, root: Path) -> None:
    """Five retrains' worth of artifacts, each a minute older than the next."""
    for age, version in enumerate(reversed(VERSIONS)):
        generation = f"{version}-run{version[1]}"
        # Every version holds day 0's shard and one of its own.
        store.write_json(f"datasets/{version}/dataset.json", {"shards": shards(version)})
        keys = [
            *(f"{prefix}/train.parquet" for prefix in shards(version)),
            f"datasets/{version}/train.parquet",
            f"models/{generation}/model.pt",
            f"compressed/{generation}/int8/model.pt",
            f"compressed/{generation}/variants.json",
            f"reports/{generation}/int8/report.html",
            f"checkpoints/{version}/run{version[1]}/latest.pt",
            f"runs/run{version[1]}/train_job.json",
            f"tuning/digits-{version}/trial-0/job.json",
        ]
        for key in keys:
            store.write_bytes(key, b"x" * 10)
        stamp = 1_700_000_000 - 60 * age
        for key in [*keys, f"datasets/{version}/dataset.json"]:
            os.utime(root / key, (stamp, stamp))
    for key in ("raw/2026-01-01.parquet", "validated/2026-01-01.parquet"):
        store.write_bytes(key, b"data")
    # The first model was a champion once, then replaced: rollback must still find it.
    for version in ("v1", "v5"):
        promote(
            store,
            {
                "model_prefix": f"compressed/{version}-run{version[1]}/int8",
                "dataset_version": version,
            },
            run_id=f"promote-{version}",
        )
    store.write_json("current/training_dataset.json", {"version": "v5"})
    store.write_json("current/trained_model.json", {"prefix": "models/v5-run5"})
    # The configuration trained with came from the oldest study.
    store.write_json("current/tuned_config.json", {"study": "digits-v1", "trial": 0})


def test_the_plan_keeps_the_newest_and_everything_named(
    artifacts: ArtifactStore, lepton_home: Path
):
    fill(artifacts, lepton_home / "artifacts")
    plan = retention_plan(artifacts, keep_last=2)
    gone = sorted((e.kind, e.name) for e in plan.delete)
    assert gone == [
        ("checkpoint", "v1/run1"),
        ("checkpoint", "v2/run2"),
        ("checkpoint", "v3/run3"),
        ("dataset", "v2"),
        ("dataset", "v3"),
        ("generation", "v2-run2"),
        ("generation", "v3-run3"),
        ("run", "run1"),
        ("run", "run2"),
        ("run", "run3"),
        ("shard", "d2-x"),
        ("shard", "d3-x"),
        ("study", "digits-v2"),
        ("study", "digits-v3"),
    ]
    generation = next(e for e in plan.delete if e.name == "v2-run2")
    assert sorted(generation.files) == [
        "compressed/v2-run2/int8/model.pt",
        "compressed/v2-run2/variants.json",
        "models/v2-run2/model.pt",
        "reports/v2-run2/int8/report.html",
    ]
    # 2 datasets (dataset.json and a file), 2 generations of 4 files, 3 checkpoints, 3 job
    # files, 2 shards, 2 studies' trial files; 10 bytes a file
    info_bytes = artifacts.files("datasets/v2")["datasets/v2/dataset.json"][0]
    assert plan.freed_bytes == 2 * info_bytes + 10 * (2 + 2 * 4 + 3 + 3 + 2 + 2)


def test_gc_lists_on_a_dry_run_then_removes_and_is_idempotent(
    artifacts: ArtifactStore, lepton_home: Path, capsys: pytest.CaptureFixture[str]
):
    fill(artifacts, lepton_home / "artifacts")
    root = lepton_home / "artifacts"
    before = sorted(p for p in root.rglob("*") if p.is_file())
    assert main(["gc", "--keep-last", "2", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would remove generation v2-run2 (4 files, 40 bytes)" in out
    assert "gc: 14 entries, 318 bytes to free (dry run: nothing removed); 17 kept" in out
    assert sorted(p for p in root.rglob("*") if p.is_file()) == before
    assert main(["gc", "--keep-last", "2"]) == 0
    assert not artifacts.exists("models/v2-run2/model.pt")
    assert artifacts.exists("compressed/v1-run1/int8/model.pt")  # in the champion history
    assert artifacts.exists("raw/2026-01-01.parquet") and artifacts.exists(
        "datasets/v1/train.parquet"
    )
    # Day 0's shard is in every kept version; day 2's only in the removed v2.
    assert artifacts.exists("shards/d0-x/train.parquet")
    assert not artifacts.exists("shards/d2-x/train.parquet")
    # The study current/tuned_config.json names stays however old; older ones go.
    assert artifacts.exists("tuning/digits-v1/trial-0/job.json")
    assert not artifacts.exists("tuning/digits-v2/trial-0/job.json")
    assert main(["gc", "--keep-last", "2"]) == 0
    assert "gc: 0 entries, 0 bytes freed" in capsys.readouterr().out.splitlines()[-1]


def test_keeping_nothing_is_refused(artifacts: ArtifactStore):
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        retention_plan(artifacts, keep_last=0)
    with pytest.raises(ValueError, match="keep_days must be at least 1"):
        retention_plan(artifacts, keep_days=0)


def test_served_days_and_candidates_keep_only_the_newest_days(
    artifacts: ArtifactStore, capsys: pytest.CaptureFixture[str]
):
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    for day in days:
        artifacts.write_bytes(f"serving/samples/{day}/10/r-1.parquet", b"rows")
        artifacts.write_bytes(f"serving/samples/{day}/11/r-2.parquet", b"rows")
        artifacts.write_json(f"serving/drift/{day}.json", {"day": day})
        artifacts.write_bytes(f"annotations/candidates/{day}.parquet", b"rows")
    artifacts.write_bytes("serving/drift/notes.txt", b"not a day")  # left alone
    artifacts.write_json("serving/replicas/r1.json", {"replica": "r1"})  # not by day
    gone = sorted((e.kind, e.name) for e in retention_plan(artifacts, keep_days=2).delete)
    assert gone == [
        ("annotation_candidates", "2026-01-01"),
        ("served_drift", "2026-01-01"),
        ("served_samples", "2026-01-01"),
    ]
    assert main(["gc", "--keep-days", "1", "--dry-run"]) == 0
    assert "would remove served_samples 2026-01-02 (2 files, 8 bytes)" in capsys.readouterr().out
    assert main(["gc", "--keep-days", "1"]) == 0
    kept = sorted(artifacts.files("serving")) + sorted(artifacts.files("annotations"))
    assert kept == [
        "serving/drift/2026-01-03.json",
        "serving/drift/notes.txt",
        "serving/replicas/r1.json",
        "serving/samples/2026-01-03/10/r-1.parquet",
        "serving/samples/2026-01-03/11/r-2.parquet",
        "annotations/candidates/2026-01-03.parquet",
    ]

"""Scale: a day's work reads only that day, and a training rank's memory does not grow with
the data. Work is counted in artifact reads (timings belong in bench/scale_bench.py)."""

import io
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import cast

import dagster as dg
import pytest
import yaml

from lepton_assets.definitions import resources
from lepton_assets.demo import digits_day
from lepton_assets.ingestion import raw_batches
from lepton_assets.training import trained_model
from lepton_assets.validation import validated_batches
from lepton_core import data
from lepton_core.data import accepted_partitions, build_dataset
from lepton_core.keys import current_key
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import HorovodLauncherResource
from resources.project import ProjectResource

DAYS = [(date(2025, 1, 1) + timedelta(days=d)).isoformat() for d in range(8)]


def test_each_day_reads_only_its_own_data(
    landing: ArtifactStore,
    artifacts: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    for day in DAYS:
        buf = io.BytesIO()
        digits_day(300, day).write_parquet(buf)
        landing.write_bytes(f"{day}/batch.parquet", buf.getvalue())
    reads: dict[str, list[str]] = defaultdict(list)
    current = {"day": ""}
    for name in (
        "read_bytes",
        "read_parquet",
        "read_row_group",
        "row_group_sizes",
        "list",
        "files",
    ):
        original = getattr(ArtifactStore, name)

        def counted(self, key, *args, _original=original, **kwargs):
            reads[current["day"]].append(key)
            return _original(self, key, *args, **kwargs)

        monkeypatch.setattr(ArtifactStore, name, counted)
    for i, day in enumerate(DAYS):
        current["day"] = day
        result = dg.materialize(
            [raw_batches, validated_batches],
            resources=resources,
            instance=instance,
            partition_key=day,
        )
        assert result.success
        if i == 0:  # a training dataset, so the drift check runs from the second day on
            current["day"] = "build"
            version, _ = build_dataset(artifacts, DIGITS_SPEC, accepted_partitions(artifacts)[0])
            artifacts.write_json(current_key("training_dataset"), {"version": version})
    for day in DAYS[1:]:
        others = [k for k in reads[day] if any(d in k for d in DAYS if d != day)]
        assert others == [], f"{day} read other days' artifacts"
        assert len(reads[day]) == len(reads[DAYS[1]])


@pytest.mark.slow
def test_a_rank_memory_does_not_grow_with_the_data(
    artifacts: ArtifactStore,
    tmp_path: Path,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    """One epoch of the MLP on 2 ranks over 1 and 4 days of 60k rows: each rank's peak
    RSS (reported by the worker) may grow by at most 20%. Row groups of 4,096 rows, so that
    even at 1x a rank's part (24k rows) is more than its buffer of four row groups."""
    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 4096)
    project = tmp_path / "lepton.yaml"
    dataset = DIGITS_SPEC.model_dump(mode="json")
    project.write_text(
        yaml.safe_dump({"dataset": dataset, "model": {"factory": "lepton_core.models:mlp"}})
    )
    monkeypatch.setenv("LEPTON_PROJECT", str(project))
    peaks = {}
    for days in (1, 4):
        manifests = []
        for d in DAYS[:days]:
            frame = digits_day(60_000, d)
            digest = artifacts.write_parquet(f"validated/{d}.parquet", frame)
            manifests.append({"partition": d, "sha256": digest})
        version, info = build_dataset(artifacts, DIGITS_SPEC, manifests)
        artifacts.write_json(current_key("training_dataset"), {"version": version})
        result = dg.materialize(
            [trained_model],
            resources={
                **resources,
                "project": ProjectResource(),
                "horovod": HorovodLauncherResource(num_processes=2),
            },
            instance=instance,
            run_config={"ops": {"trained_model": {"config": {"epochs": 1, "patience": 0}}}},
        )
        [history] = [
            cast(list, m.metadata["history"].value)
            for m in result.asset_materializations_for_node("trained_model")
        ]
        assert info["rows"]["train"] > 44_000 * days
        peaks[days] = max(history[-1]["rank_peak_rss_mb"])
    assert peaks[4] <= 1.2 * peaks[1], peaks

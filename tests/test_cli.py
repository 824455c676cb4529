"""`lepton` failures: exit 1 naming the stage, the partition, the file and the reason."""

import os
from pathlib import Path

import pytest

from lepton_assets.cli import changed_days, main
from lepton_core.store import ArtifactStore
from resources.landing_zone import LandingZoneResource


def test_run_names_stage_partition_and_file_and_trains_nothing(
    lepton_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    day = lepton_home / "landing" / "2026-01-02"
    day.mkdir(parents=True)
    (day / "broken.csv").write_text("sample_id,label\nx-1,3\n")
    assert main(["run"]) == 1
    err = capsys.readouterr().err
    assert "lepton run: FAILED: 1 of 1 days failed" in err
    assert (
        "ingestion partition 2026-01-02: lepton_core.rows.IngestionError: "
        "2026-01-02/broken.csv: missing columns" in err
    )
    assert not (lepton_home / "artifacts" / "current").exists()  # nothing was trained


def test_a_missing_project_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert main(["status", "--project", str(tmp_path / "nope.yaml")]) == 2
    assert f"project file {tmp_path / 'nope.yaml'} not found" in capsys.readouterr().err


def test_changed_days_hashes_only_files_whose_listing_stamp_moved(
    seeded: ArtifactStore, lepton_home: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    days = ["2026-01-01", "2026-01-02"]
    for day in days:
        assert main(["ingest", "--day", day]) == 0
    hashed: list[str] = []
    sha256 = ArtifactStore.sha256

    def counted(self: ArtifactStore, key: str) -> str:
        hashed.append(key)
        return sha256(self, key)

    monkeypatch.setattr(ArtifactStore, "sha256", counted)
    landing, artifacts = LandingZoneResource(), str(lepton_home / "artifacts")
    pending = changed_days(landing, f"file://{artifacts}")
    assert pending == ["2026-01-03", "2026-01-04", "2026-01-05", "2026-01-06", "2026-01-07"]
    assert hashed == []  # ingested days whose files did not move are not read
    # The same bytes written again (a new modified time): read and hashed, not a change.
    first = seeded.list("2026-01-01")[0]
    data = seeded.read_bytes(first)
    stamp = seeded.local_path(first).stat().st_mtime_ns
    seeded.write_bytes(first, data)
    os.utime(seeded.local_path(first), ns=(stamp + 10**9, stamp + 10**9))  # a second later
    assert changed_days(landing, f"file://{artifacts}") == pending
    assert hashed == [first]
    # Other bytes: the day is to ingest again.
    seeded.write_bytes(first, data + b"\n" if first.endswith(".csv") else data[:-1])
    assert changed_days(landing, f"file://{artifacts}") == ["2026-01-01", *pending]

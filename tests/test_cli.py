"""`lepton` failures: exit 1 naming the stage, the partition, the file and the reason."""

from pathlib import Path

import pytest

from lepton_assets.cli import main


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

"""lepton backup / restore: what they refuse, and data backed up by reference.

The full round trip (a champion, destroyed home, restore, same status, rerun, retrain) is in
test_end_to_end.
"""

import json
import shutil
from pathlib import Path

import pytest

from lepton_assets.cli import main
from lepton_core.store import ArtifactStore

from .conftest import DEMO_END
from .services import ROOT, instance_env, throwaway_database
from .test_postgres import count


@pytest.fixture
def ingested(lepton_home: Path, seeded: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home with one ingested and validated demo day."""
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    assert main(["ingest", "--day", DEMO_END.isoformat()]) == 0
    return lepton_home


def test_backup_refuses_a_used_or_unwritable_destination_before_writing(
    ingested: Path, capsys: pytest.CaptureFixture[str]
):
    used = ingested.parent / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    assert main(["backup", str(used)]) == 1
    assert f"backup destination {used} is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in used.iterdir()] == ["keep.txt"]
    blocked = ingested.parent / "a-file"
    blocked.write_text("not a folder")
    assert main(["backup", str(blocked / "backup")]) == 1
    assert "is not writable" in capsys.readouterr().err


def test_restore_refuses_a_home_with_data_and_a_tampered_backup(
    ingested: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    backup = ingested.parent / "backup"
    assert main(["backup", str(backup)]) == 0
    assert main(["restore", str(backup)]) == 1
    assert "the home is not empty" in capsys.readouterr().err
    assert main(["restore", str(ingested.parent)]) == 1
    assert "holds no manifest.json" in capsys.readouterr().err
    manifest = json.loads((backup / "manifest.json").read_text())
    raw = next(name for name in manifest["files"] if name.startswith("artifacts/raw/"))
    (backup / raw).write_bytes(b"changed")
    fresh = ingested.parent / "fresh"
    monkeypatch.setenv("LEPTON_HOME", str(fresh))
    monkeypatch.delenv("DAGSTER_HOME")
    assert main(["restore", str(backup)]) == 1
    assert f"{backup / raw} does not match its sha256" in capsys.readouterr().err
    assert not (fresh / "artifacts" / "raw").exists()  # checked before anything is written


def test_data_by_reference_is_named_not_copied_and_restored_from_its_store(
    ingested: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    backup = ingested.parent / "backup"
    # A rollback journal left beside the index: replayed over a restored copy, it would undo
    # what the online backup copied, so it is not taken.
    (ingested / "artifacts" / "index" / "ids.sqlite-journal").write_bytes(b"stale")
    assert main(["backup", str(backup), "--data", "reference"]) == 0
    manifest = json.loads((backup / "manifest.json").read_text())
    day = DEMO_END.isoformat()
    referenced = manifest["referenced"]
    assert f"raw/{day}.parquet" in referenced["artifacts"]
    assert f"validated/{day}.parquet" in referenced["artifacts"]
    assert referenced["landing"] and not (backup / "landing").exists()
    assert not any(name.endswith(".parquet") for name in manifest["files"])
    assert f"artifacts/raw/{day}.json" in manifest["files"]  # metadata is copied
    assert "artifacts/index/ids.sqlite" in manifest["files"]
    assert "artifacts/index/ids.sqlite-journal" not in manifest["files"]
    # Restored into another home: the data comes from the store it was referenced in.
    original = ArtifactStore(f"file://{ingested / 'artifacts'}")
    fresh = ingested.parent / "fresh"
    monkeypatch.setenv("LEPTON_HOME", str(fresh))
    monkeypatch.delenv("DAGSTER_HOME")
    # Read from the stores the manifest names only when the operator names them too.
    assert main(["restore", str(backup)]) == 1
    assert "--referenced-from" in capsys.readouterr().err
    assert ArtifactStore(f"file://{fresh / 'artifacts'}").files("") == {}
    origins = ["--referenced-from", original.uri, "--referenced-from", manifest["landing_uri"]]
    assert main(["restore", str(backup), *origins]) == 0
    restored = ArtifactStore(f"file://{fresh / 'artifacts'}")
    assert restored.sha256(f"validated/{day}.parquet") == original.sha256(
        f"validated/{day}.parquet"
    )
    assert sorted(ArtifactStore(f"file://{fresh / 'landing'}").files("")) == sorted(
        referenced["landing"]
    )
    # Gone from where it was referenced: the restore says which file it cannot bring back.
    original.delete(f"raw/{day}.parquet")
    again = ingested.parent / "again"
    monkeypatch.setenv("LEPTON_HOME", str(again))
    monkeypatch.delenv("DAGSTER_HOME")
    capsys.readouterr()
    assert main(["restore", str(backup), *origins]) == 1
    assert f"raw/{day}.parquet (backed up by reference" in capsys.readouterr().err
    # Found missing before anything was written.
    assert ArtifactStore(f"file://{again / 'artifacts'}").files("") == {}


@pytest.mark.integration
def test_an_instance_on_postgres_is_dumped_and_restored_into_an_empty_database(
    lepton_home: Path,
    seeded: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    with throwaway_database("lepton_backup") as source, throwaway_database("lepton_new") as target:
        dagster_home = lepton_home / "dagster_home"
        dagster_home.mkdir(parents=True)
        shutil.copy(ROOT / "deploy" / "dagster.yaml", dagster_home / "dagster.yaml")
        for key, value in instance_env(dagster_home, source).items():
            monkeypatch.setenv(key, value)
        assert main(["ingest", "--day", DEMO_END.isoformat()]) == 0
        backup = lepton_home.parent / "backup"
        assert main(["backup", str(backup)]) == 0
        manifest = json.loads((backup / "manifest.json").read_text())
        assert manifest["dagster_storage"] == "postgres"
        assert "dagster/instance.dump" in manifest["files"]
        # A new machine: an empty home, its instance's variables naming an empty database.
        fresh = lepton_home.parent / "fresh"
        monkeypatch.setenv("LEPTON_HOME", str(fresh))
        for key, value in instance_env(fresh / "dagster_home", target).items():
            monkeypatch.setenv(key, value)
        assert main(["restore", str(backup)]) == 0
        capsys.readouterr()
        assert count(target, "SELECT count(*) FROM runs") == 1
        assert main(["status"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert [r["job"] for r in status["latest_runs"]] == ["ingest_job"]
        # The six other seeded days wait; the ingested one is known to the restored instance.
        assert status["days_to_ingest"] == [f"2026-01-0{d}" for d in range(1, 7)]
        # Restoring again finds the database in use and refuses.
        shutil.rmtree(fresh / "artifacts")
        shutil.rmtree(fresh / "landing")
        assert main(["restore", str(backup)]) == 1
        assert "1 runs in the instance's database" in capsys.readouterr().err

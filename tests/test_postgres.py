"""The pipeline on a Dagster instance stored in a real PostgreSQL (deploy/dagster.yaml)."""

import glob
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import PIPE

import dagster as dg
import psycopg2
import pytest

from lepton_assets.definitions import defs
from lepton_assets.demo import digits_day
from lepton_core.store import ArtifactStore

from .services import BIN, PG, ROOT, database_url, instance_env, throwaway_database
from .test_s3 import free_port


@pytest.fixture
def throwaway_db() -> Iterator[str]:
    with throwaway_database("lepton_test") as name:
        yield name


def count(db: str, sql: str, params: tuple = (), server: dict | None = None) -> int:
    """The number ``sql`` selects in ``db`` (on ``server``, by default the machine's)."""
    connection = psycopg2.connect(dbname=db, **(server or PG))
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        (value,) = cursor.fetchone() or (0,)
    connection.close()
    return int(value)


@pytest.mark.integration
def test_runs_materializations_and_checks_are_stored_in_postgres(
    throwaway_db: str, seeded, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for key, value in instance_env(home, throwaway_db).items():
        monkeypatch.setenv(key, value)
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = defs.resolve_job_def("ingest_job").execute_in_process(
            instance=instance, partition_key="2026-01-01"
        )
        assert result.success
        assert instance.get_run_by_id(result.run_id) is not None
    assert count(throwaway_db, "SELECT count(*) FROM runs") == 1
    assert (
        count(
            throwaway_db,
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
        )
        == 2
    )
    assert (
        count(
            throwaway_db,
            "SELECT count(*) FROM asset_check_executions WHERE execution_status = 'SUCCEEDED'",
        )
        == 3
    )


@pytest.fixture
def own_postgres() -> Iterator[tuple[int, Callable[[], None]]]:
    """A PostgreSQL cluster of this test's own on a free loopback port (so restarting it
    touches no other test), and a function that restarts it as an operator would (``-m
    fast``: every open connection is cut)."""
    (pg_ctl,) = glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    data = Path(tempfile.mkdtemp(prefix="lepton-pg-"))
    if as_postgres:
        shutil.chown(data, "postgres")
    port = free_port()
    options = f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data}"
    control = [*as_postgres, pg_ctl, "-D", str(data / "db"), "-w", "-l", str(data / "log")]
    initdb = [*as_postgres, pg_ctl, "initdb", "-D", str(data / "db"), "-o", "-A trust -U postgres"]
    subprocess.run(initdb, check=True, capture_output=True)
    subprocess.run([*control, "-o", options, "start"], check=True, capture_output=True)

    def restart() -> None:
        subprocess.run([*control, "-m", "fast", "restart"], check=True, capture_output=True)

    try:
        yield port, restart
    finally:
        subprocess.run([*control, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def events_of(server: dict, event_type: str, step: str) -> int:
    sql = "SELECT count(*) FROM event_logs WHERE dagster_event_type = %s AND step_key = %s"
    return count("postgres", sql, (event_type, step), server)


@pytest.mark.integration
@pytest.mark.slow
def test_a_postgres_restart_mid_run_ends_the_run_cleanly_and_a_rerun_succeeds(
    own_postgres: tuple[int, Callable[[], None]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The instance and the id index in one PostgreSQL, restarted while a day of 400k rows is
    validated: the run ends (SUCCESS, or FAILURE recorded), never hangs STARTED; a rerun of
    the day succeeds and leaves the day's ids claimed once."""
    port, restart = own_postgres
    server = {**PG, "port": port, "user": "postgres"}
    day, rows = "2026-03-01", 400_000
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    for key, value in {**instance_env(home, "postgres"), "DAGSTER_PG_PORT": str(port)}.items():
        monkeypatch.setenv(key, value)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    env.update(
        LEPTON_HOME=str(tmp_path / "lepton"),
        LEPTON_ID_INDEX_URL=database_url("postgres", server),
    )
    landing = tmp_path / "lepton" / "landing" / day
    landing.mkdir(parents=True)
    digits_day(rows, "pg").write_parquet(landing / "batch.parquet")
    command = [str(BIN / "dagster"), "job", "execute", "-m", "lepton_assets.definitions"]
    command += ["-j", "ingest_job", "--tags", json.dumps({"dagster/partition": day})]
    with dg.DagsterInstance.from_config(str(home)):
        pass  # the schema, before the run's processes open the database
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=PIPE)
    deadline = time.monotonic() + 300
    while not events_of(server, "STEP_START", "validated_batches"):
        assert run.poll() is None and time.monotonic() < deadline, "validation never started"
        time.sleep(0.2)
    assert not events_of(server, "STEP_SUCCESS", "validated_batches")
    restart()
    _, failed = run.communicate(timeout=300)
    print(run.returncode, failed.decode()[-3000:])  # noqa: T201  (shown when the test fails)
    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        second, first = instance.get_runs()  # newest first
        assert first.status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)
        assert second.status == dg.DagsterRunStatus.SUCCESS
    artifacts = ArtifactStore(f"file://{tmp_path / 'lepton' / 'artifacts'}")
    assert artifacts.read_json(f"validated/{day}.json")["check_passed"]
    sql = "SELECT count(*) FROM lepton_ids WHERE day = %s"
    assert count("postgres", sql, (day,), server) == rows

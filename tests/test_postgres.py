"""The pipeline on a Dagster instance stored in a real PostgreSQL (deploy/dagster.yaml)."""

import os
import shutil
import uuid
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from lepton_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("LEPTON_TEST_PG_USER", "postgres")}


def admin(sql: str) -> None:
    connection = psycopg2.connect(dbname="postgres", **PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@pytest.fixture
def throwaway_db():
    name = f"lepton_test_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE DATABASE "{name}"')
    yield name
    admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
    admin(f'DROP DATABASE "{name}"')


def instance_env(home: Path, db: str) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, for an instance in ``db``."""
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_DB": db,
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "unused",  # trust authentication on loopback
    }


def count(db: str, sql: str) -> int:
    connection = psycopg2.connect(dbname=db, **PG)
    with connection.cursor() as cursor:
        cursor.execute(sql)
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

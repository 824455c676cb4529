"""The machine's local services as the integration tests and the benches use them: the
PostgreSQL server on loopback (trust authentication), throwaway databases on it, the
variables deploy/dagster.yaml reads, and stack processes started in their own process group.

Not a test module: bench/backfill_bench.py imports it too, so it needs nothing of pytest.
"""

import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import psycopg2

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
T = TypeVar("T")
PG = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("LEPTON_TEST_PG_USER", "postgres")}


def admin(sql: str) -> None:
    connection = psycopg2.connect(dbname="postgres", **PG)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute(sql)
    connection.close()


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new database named ``<prefix>_<random>``, dropped afterwards (its sessions cut)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        admin(f'DROP DATABASE "{name}"')


def database_url(db: str, server: dict | None = None) -> str:
    """SQLAlchemy's URL of ``db`` on ``server`` (by default the machine's, ``PG``)."""
    at = server or PG
    return f"postgresql://{at['user']}@{at['host']}:{at['port']}/{db}"


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


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """``command`` from the repository root, leading a process group of its own (so that
    it and its children stop together), its output in ``log``."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def wait_for(condition: Callable[[], T | None], seconds: float, what: str, step: float = 0.2) -> T:
    """The first true value of ``condition()``, polled every ``step`` seconds; an
    AssertionError naming ``what`` once ``seconds`` have passed without one."""
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds}s waiting for {what}"
        time.sleep(step)

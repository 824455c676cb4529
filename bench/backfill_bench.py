"""A backfill of many days on one Celery worker and on two, side by side in one run.

    .venv/bin/python bench/backfill_bench.py [--days 30] [--rows 20000]

Needs PostgreSQL on 127.0.0.1:5432 (trust authentication) and RabbitMQ on 127.0.0.1:5672,
as the test machines run them. For each worker count: a fresh database for the instance
(deploy/dagster.yaml) and the id index, fresh landing and artifact folders holding ``--days``
days of ``--rows`` digits rows, the daemon, and that many workers (one step at a time each).
The sensors are stopped, so only the backfill's runs ingest. Times ``dagster job backfill``
of ``ingest_job`` from submission until every run has ended, checks each succeeded, and
prints seconds per configuration and the speed-up of two workers over one.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from lepton_assets.demo import digits_day
from resources.horovod_launcher import stop_processes_with

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' service helpers
from tests.services import BIN, ROOT, database_url, instance_env, start, throwaway_database  # noqa: E402

QUEUE = "dagster"  # dagster-celery's one queue


def dagster(env: dict[str, str], *args: str) -> None:
    command = [str(BIN / "dagster"), *args]
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)


def stack_env(home: Path, db: str) -> dict[str, str]:
    return {
        **os.environ,
        **instance_env(home / "dagster_home", db),
        "LEPTON_HOME": str(home),
        "LEPTON_ID_INDEX_URL": database_url(db),
        "LEPTON_EXECUTOR": "celery",
        "LEPTON_CELERY_BROKER": "pyamqp://guest:guest@127.0.0.1:5672//",
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }


def land(home: Path, days: list[str], rows: int) -> None:
    for i, day in enumerate(days):
        (home / "landing" / day).mkdir(parents=True)
        digits_day(rows, f"d{i}").write_parquet(home / "landing" / day / "batch.parquet")


def wait_for_runs(env: dict[str, str], count: int) -> Sequence[dg.DagsterRun]:
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_")})
    with dg.DagsterInstance.get() as instance:
        while True:
            runs = instance.get_runs(dg.RunsFilter(job_name="ingest_job"))
            if len(runs) == count and all(run.is_finished for run in runs):
                return runs
            time.sleep(1)


def backfill_seconds(workers: int, days: list[str], rows: int) -> float:
    """Seconds from the backfill's submission until all its runs ended, on ``workers``."""
    with throwaway_database("lepton_bench") as db:
        return timed_backfill(db, workers, days, rows)


def timed_backfill(db: str, workers: int, days: list[str], rows: int) -> float:
    """``backfill_seconds`` on a stack whose instance and id index are in ``db``."""
    home = Path(tempfile.mkdtemp(prefix="lepton-backfill-"))
    env = stack_env(home, db)
    (home / "dagster_home").mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    land(home, days, rows)
    dagster(env, "instance", "migrate")
    for sensor in ("landing_sensor", "retraining_sensor"):
        dagster(env, "sensor", "stop", "-w", "workspace.yaml", sensor)
    subprocess.run(["rabbitmqctl", "purge_queue", QUEUE], capture_output=True)
    worker = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
    worker += ["-y", str(ROOT / "deploy" / "celery.yaml"), "-q", QUEUE, "-n"]
    processes = [
        start([*worker, f"bench{i}@%h", "--", "--concurrency=1"], env, home / f"worker{i}.log")
        for i in range(workers)
    ]
    daemon = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    processes.append(start(daemon, env, home / "daemon.log"))
    try:
        time.sleep(20)  # workers and daemon up: the figure is the backfill's own time
        began = time.monotonic()
        partitions = ["job", "backfill", "-w", "workspace.yaml", "-j", "ingest_job"]
        dagster(env, *partitions, "--partitions", ",".join(days), "--noprompt")
        runs = wait_for_runs(env, len(days))
        seconds = time.monotonic() - began
        failed = [run.run_id for run in runs if run.status != dg.DagsterRunStatus.SUCCESS]
        if failed:
            raise RuntimeError(f"runs failed: {failed}; logs in {home}")
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
        # What the daemon started (its code server, run processes) left its process group.
        stop_processes_with("DAGSTER_HOME", env["DAGSTER_HOME"])
        subprocess.run(["rabbitmqctl", "purge_queue", QUEUE], capture_output=True)
    shutil.rmtree(home, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows", type=int, default=20_000)
    args = parser.parse_args()
    days = [(date(2026, 1, 1) + timedelta(days=d)).isoformat() for d in range(args.days)]
    one = backfill_seconds(1, days, args.rows)
    print(f"{args.days} days x {args.rows} rows, 1 worker:  {one:7.1f} s")  # noqa: T201
    two = backfill_seconds(2, days, args.rows)
    print(f"{args.days} days x {args.rows} rows, 2 workers: {two:7.1f} s")  # noqa: T201
    print(f"speed-up of 2 workers over 1: {one / two:.2f}x")  # noqa: T201


if __name__ == "__main__":
    main()

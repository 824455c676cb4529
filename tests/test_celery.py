"""Dagster steps on real Celery workers: RabbitMQ on loopback, a PostgreSQL instance, the
landing zone and artifacts on a real S3 endpoint, the id index in PostgreSQL, the daemon
launching the runs of a `dagster job backfill`, two workers taking the steps."""

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from lepton_assets.demo import seed_landing
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import stop_processes_with

from .test_postgres import PG, instance_env, throwaway_db  # noqa: F401  (the fixture)
from .test_s3 import BUCKET, s3_endpoint  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
pytestmark = [pytest.mark.slow, pytest.mark.integration]


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        with_group = process.pid
        try:
            os.killpg(with_group, signal.SIGTERM)
        except ProcessLookupError:
            continue
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture
def celery_stack(
    throwaway_db: str,  # noqa: F811
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[dict[str, str]]:
    """The environment every process shares, the daemon and two workers on Lepton's queue
    ("dagster"), emptied before and after: tasks queued while no worker runs wait in the
    broker, even for runs that are long gone."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    pg = f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{throwaway_db}"
    settings = {
        **instance_env(home, throwaway_db),
        "LEPTON_HOME": str(tmp_path / "lepton"),
        "LEPTON_LANDING_URI": f"s3://{BUCKET}/celery/landing",
        "LEPTON_ARTIFACTS_URI": f"s3://{BUCKET}/celery/artifacts",
        "LEPTON_ID_INDEX_URL": pg,
        "LEPTON_EXECUTOR": "celery",
        "LEPTON_CELERY_BROKER": "pyamqp://guest:guest@127.0.0.1:5672//",
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    env = dict(os.environ)
    # The schema first: processes creating it at once on an empty database can collide.
    with dg.DagsterInstance.get():
        pass
    queue = "dagster"
    subprocess.run(["rabbitmqctl", "purge_queue", queue], capture_output=True)
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = [str(BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
    worker += ["-y", str(ROOT / "deploy" / "celery.yaml"), "-q", queue]
    processes = [
        start([*worker, "-n", f"{name}@%h", "--", "--concurrency=1"], env, logs / f"{name}.log")
        for name in ("worker1", "worker2")
    ]
    processes.append(
        start(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"], env, logs / "daemon.log"
        )
    )
    try:
        yield env
    finally:
        stop(processes)
        # Run workers the daemon launched leave its process group: find them by home.
        stop_processes_with("DAGSTER_HOME", str(home))
        subprocess.run(["rabbitmqctl", "purge_queue", queue], capture_output=True)


def test_a_backfill_runs_its_steps_on_two_celery_workers(celery_stack):
    env = celery_stack
    landing = ArtifactStore(env["LEPTON_LANDING_URI"])
    seed_landing(landing, days=len(DAYS), end=date.fromisoformat(DAYS[-1]))
    backfill = [str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml"]
    backfill += ["-j", "ingest_job", "--partitions", ",".join(DAYS), "--noprompt"]
    done = subprocess.run(backfill, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]

    with dg.DagsterInstance.get() as instance:
        deadline = time.monotonic() + 420
        while True:
            # The landing sensor runs too (the daemon ticks it): count the backfill's runs.
            runs = [
                r
                for r in instance.get_runs(dg.RunsFilter(job_name="ingest_job"))
                if "dagster/backfill" in r.tags
            ]
            if len(runs) == len(DAYS) and all(r.is_finished for r in runs):
                break
            assert time.monotonic() < deadline, [(r.run_id, r.status) for r in runs]
            time.sleep(3)
        assert sorted(r.tags["dagster/partition"] for r in runs) == DAYS
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        workers = set()
        for run in runs:
            for record in instance.all_logs(run.run_id):
                event = record.dagster_event
                if event and event.event_type_value == "ENGINE_EVENT":
                    data = event.engine_event_data.metadata if event.engine_event_data else {}
                    if "Celery worker" in data:
                        workers.add(str(data["Celery worker"].value).split("@")[0])
            materialized = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ).records
            assert len(materialized) == 2  # raw_batches and validated_batches
    assert workers == {"worker1", "worker2"}
    artifacts = ArtifactStore(env["LEPTON_ARTIFACTS_URI"])
    for day in DAYS:
        assert artifacts.read_json(f"validated/{day}.json")["check_passed"]

"""Dagster steps on real Celery workers: RabbitMQ on loopback, a PostgreSQL instance, the
landing zone and artifacts on a real S3 endpoint, the id index in PostgreSQL, the daemon
launching the runs of a `dagster job backfill`, two workers taking the steps."""

import io
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from lepton_assets.demo import digits_day, seed_landing
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import stop_processes_with

from .services import BIN, ROOT, database_url, instance_env, start, wait_for
from .test_postgres import count, throwaway_db  # noqa: F401  (the fixture)
from .test_s3 import BUCKET, free_port, s3_endpoint  # noqa: F401  (the fixture)

# Celery tests share RabbitMQ's "dagster" queue (purged at start): one worker runs them in turn.
pytestmark = pytest.mark.xdist_group("celery_queue")

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]


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


@dataclass
class CeleryStack:
    env: dict[str, str]  # what every process of the stack shares
    workers: dict[str, subprocess.Popen]  # by name; each leads its own process group


@pytest.fixture
def celery_stack(
    throwaway_db: str,  # noqa: F811
    s3_endpoint: str,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator["CeleryStack"]:
    """The environment every process shares, the daemon and two workers on Lepton's queue
    ("dagster"), emptied before and after: tasks queued while no worker runs wait in the
    broker, even for runs that are long gone."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    settings = {
        **instance_env(home, throwaway_db),
        "LEPTON_HOME": str(tmp_path / "lepton"),
        "LEPTON_LANDING_URI": f"s3://{BUCKET}/celery/landing",
        "LEPTON_ARTIFACTS_URI": f"s3://{BUCKET}/celery/artifacts",
        "LEPTON_ID_INDEX_URL": database_url(throwaway_db),
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
    worker += ["-y", str(ROOT / "deploy" / "celery.yaml"), "-q", queue, "-n"]
    workers = {
        name: start([*worker, f"{name}@%h", "--", "--concurrency=1"], env, logs / f"{name}.log")
        for name in ("worker1", "worker2")
    }
    daemon = [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]
    processes = [*workers.values(), start(daemon, env, logs / "daemon.log")]
    try:
        yield CeleryStack(env, workers)
    finally:
        stop(processes)
        # Run workers the daemon launched leave its process group: find them by home.
        stop_processes_with("DAGSTER_HOME", str(home))
        subprocess.run(["rabbitmqctl", "purge_queue", queue], capture_output=True)


def backfill(env: dict[str, str], days: list[str]) -> None:
    """``dagster job backfill`` of ``ingest_job``: the daemon launches one run per day."""
    command = [str(BIN / "dagster"), "job", "backfill", "-w", "workspace.yaml"]
    command += ["-j", "ingest_job", "--partitions", ",".join(days), "--noprompt"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]


def step_workers(instance: dg.DagsterInstance, run_id: str) -> list[tuple[str, str]]:
    """(step, worker name) for every time a Celery worker began a step of the run."""
    began = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = event.engine_event_data.metadata if event and event.engine_event_data else {}
        if "Celery worker" in data:
            worker = str(data["Celery worker"].value).split("@")[0]
            began.append((str(data["step_keys"].value), worker))
    return began


@pytest.mark.slow
@pytest.mark.integration
def test_a_backfill_runs_its_steps_on_two_celery_workers(celery_stack):
    env = celery_stack.env
    landing = ArtifactStore(env["LEPTON_LANDING_URI"])
    seed_landing(landing, days=len(DAYS), end=date.fromisoformat(DAYS[-1]))
    backfill(env, DAYS)

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
            workers |= {worker for _, worker in step_workers(instance, run.run_id)}
            materialized = instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION
            ).records
            assert len(materialized) == 2  # raw_batches and validated_batches
    assert workers == {"worker1", "worker2"}
    artifacts = ArtifactStore(env["LEPTON_ARTIFACTS_URI"])
    for day in DAYS:
        assert artifacts.read_json(f"validated/{day}.json")["check_passed"]


def failure_messages(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every error message of the run's events, causes included, as one text."""
    texts = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        data = event.event_specific_data if event else None
        error = getattr(data, "error", None)
        while error is not None:
            texts.append(error.message)
            error = error.cause
    return "\n".join(texts)


@pytest.mark.integration
def test_a_run_fails_in_seconds_naming_a_broker_that_is_down(tmp_path: Path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    port = free_port()  # nothing listens there
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    env.update(
        DAGSTER_HOME=str(home),
        LEPTON_HOME=str(tmp_path / "lepton"),
        LEPTON_EXECUTOR="celery",
        LEPTON_CELERY_BROKER=f"pyamqp://guest:s3cret@127.0.0.1:{port}//",
    )
    command = [str(BIN / "dagster"), "job", "execute", "-m", "lepton_assets.definitions"]
    command += ["-j", "ingest_job", "--tags", json.dumps({"dagster/partition": DAYS[0]})]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - began
    assert done.returncode != 0
    assert seconds < 60  # imports included; the broker itself is given up on in about 1 s
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        assert run.status == dg.DagsterRunStatus.FAILURE
        messages = failure_messages(instance, run.run_id)
    assert f"Celery broker pyamqp://guest:**@127.0.0.1:{port}// unreachable" in messages
    assert "s3cret" not in messages + done.stdout + done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_a_step_whose_worker_dies_is_run_again_on_another_worker(celery_stack):
    """kill -9 of a whole worker (its process group: a lost machine) while it validates a
    large day: the broker hands the step to the other worker, the run succeeds, and the day
    is recorded once (one materialization per asset, its ids claimed once)."""
    env, day, rows = celery_stack.env, "2026-02-01", 400_000
    # Only the backfill's run, not the landing sensor's too, ingests the day.
    stop_sensor = [str(BIN / "dagster"), "sensor", "stop", "-w", "workspace.yaml", "landing_sensor"]
    subprocess.run(stop_sensor, cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    buffer = io.BytesIO()
    digits_day(rows, "big").write_parquet(buffer)
    ArtifactStore(env["LEPTON_LANDING_URI"]).write_bytes(f"{day}/batch.parquet", buffer.getvalue())
    backfill(env, [day])
    step = "validated_batches"  # GX over 400k rows: seconds of work to interrupt
    with dg.DagsterInstance.get() as instance:
        wait_for(lambda: started(instance, run_of(instance, day), step), 300, f"{step} to start",
                 step=0.3)  # fmt: skip
        doomed = dict(step_workers(instance, run_of(instance, day)))[step]
        os.killpg(celery_stack.workers[doomed].pid, signal.SIGKILL)
        run_id = run_of(instance, day)
        run = wait_for(lambda: finished(instance, run_id), 300, "the run to finish", step=3)
        assert run.status == dg.DagsterRunStatus.SUCCESS, failure_messages(instance, run_id)
        began = step_workers(instance, run_id)
        survivor = ({"worker1", "worker2"} - {doomed}).pop()
        assert [w for s, w in began if s == step] == [doomed, survivor], began
        successes = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS)
        assert sorted(str(r.step_key) for r in successes) == ["raw_batches", "validated_batches"]
        materialized = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION)
        assert sorted(str(r.step_key) for r in materialized) == ["raw_batches", "validated_batches"]
    artifacts = ArtifactStore(env["LEPTON_ARTIFACTS_URI"])
    assert artifacts.read_json(f"validated/{day}.json")["check_passed"]
    sql = "SELECT count(*) FROM lepton_ids WHERE day = %s"
    claimed = count(env["DAGSTER_PG_DB"], sql, (day,))
    assert claimed == rows


def finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun | None:
    run = instance.get_run_by_id(run_id)
    return run if run is not None and run.is_finished else None


def started(instance: dg.DagsterInstance, run_id: str, step: str) -> bool:
    starts = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START) if run_id else []
    return any(record.step_key == step for record in starts)


def run_of(instance: dg.DagsterInstance, day: str) -> str:
    """The id of the backfill's run of ``day`` ('' until the daemon has created it)."""
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": day}))
    return next((r.run_id for r in runs if "dagster/backfill" in r.tags), "")

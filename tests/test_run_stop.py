"""A Horovod job never outlives its step: real horovodrun, real ranks (sleepers, so the test
does not wait for training), a step process killed with SIGKILL, an ended run, an orphan
left by an earlier attempt, a work folder of a killed launch."""

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import psutil
import pytest

from resources.horovod_launcher import (
    RUN_MARKER,
    WORKDIR_PREFIX,
    HorovodLauncherResource,
    RunEndedError,
    ended_on_purpose,
    processes_with,
    remove_stale_workdirs,
    stop_leftover_ranks,
)

from .services import wait_for

SLEEPER = "import time; time.sleep(300)"


def marked(run_id: str) -> list[psutil.Process]:
    return processes_with(RUN_MARKER, run_id)


def ranks_running(run_id: str, ranks: int) -> bool:
    return sum("time.sleep" in " ".join(p.cmdline()) for p in marked(run_id)) >= ranks


@pytest.mark.slow
def test_the_ranks_die_when_the_step_process_is_killed(tmp_path: Path):
    run_id = uuid.uuid4().hex
    step = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from resources.horovod_launcher import HorovodLauncherResource\n"
        "launcher = HorovodLauncherResource(num_processes=2)\n"
        f"command = launcher.command('x', [], Path({str(tmp_path)!r}))\n"
        "command = command[: command.index(sys.executable)]\n"
        f"command += [sys.executable, '-c', {SLEEPER!r}]\n"
        "launcher._run(command, dict(os.environ), Path(sys.argv[1]), context=None)\n"
    )
    env = {**os.environ, RUN_MARKER: run_id}
    process = subprocess.Popen([sys.executable, "-c", step, str(tmp_path)], env=env)
    try:
        wait_for(lambda: ranks_running(run_id, 2), 60, "two ranks to start")
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        # horovodrun dies with its parent; its middlemen stop the ranks (5 s grace).
        wait_for(lambda: not marked(run_id), 20, "every rank and launcher to exit")
    finally:
        stop_leftover_ranks(run_id)


def test_an_ended_run_stops_its_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("resources.horovod_launcher.POLL_S", 0.5)
    run_id = uuid.uuid4().hex
    with dg.instance_for_test() as instance:
        run = dg.DagsterRun(
            job_name="training_job", run_id=run_id, status=dg.DagsterRunStatus.CANCELED
        )
        instance.add_run(run)
        context = SimpleNamespace(instance=instance, run=run, log=SimpleNamespace(info=print))
        launcher = HorovodLauncherResource(num_processes=2)
        command = launcher.command("x", [], tmp_path)
        command = command[: command.index(sys.executable)] + [sys.executable, "-c", SLEEPER]
        env = {**os.environ, RUN_MARKER: run_id}
        started = time.monotonic()
        with pytest.raises(RunEndedError, match="the run is CANCELED"):
            launcher._run(command, env, tmp_path, context)  # type: ignore[arg-type]
        assert time.monotonic() - started < 40
    wait_for(lambda: not marked(run_id), 20, "every rank to exit")


def test_a_new_attempt_stops_what_an_earlier_one_left():
    run_id, other = uuid.uuid4().hex, uuid.uuid4().hex
    orphans = [
        subprocess.Popen(
            [sys.executable, "-c", SLEEPER],
            env={**os.environ, RUN_MARKER: marker},
            start_new_session=True,
        )
        for marker in (run_id, run_id, other)
    ]
    try:
        wait_for(lambda: len(marked(run_id)) == 2, 20, "the orphans to start")
        assert stop_leftover_ranks(run_id) == 2
        assert [o.poll() is not None for o in orphans] == [True, True, False]
    finally:
        for orphan in orphans:
            orphan.kill()
            orphan.wait()


def test_work_folders_of_dead_launches_are_removed():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    root = Path(tempfile.gettempdir())
    dead = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{gone.pid}-", dir=root))
    alive = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=root))
    try:
        remove_stale_workdirs()
        assert not dead.exists() and alive.exists()
    finally:
        for folder in (dead, alive):
            if folder.exists():
                folder.rmdir()


def test_one_process_ticks_slowly_and_many_keep_horovods_default():
    assert HorovodLauncherResource(num_processes=1).worker_env()["HOROVOD_CYCLE_TIME"] == "50"
    assert "HOROVOD_CYCLE_TIME" not in HorovodLauncherResource(num_processes=2).worker_env()


def test_a_stop_on_purpose_is_found_anywhere_in_the_error_chain():
    def chained(first: BaseException, then: Exception) -> Exception:
        try:
            try:
                raise first
            except BaseException:
                raise then  # noqa: B904  (as a cleanup step raising its own error)
        except Exception as exc:
            return exc

    cleanup_error = chained(dg.DagsterExecutionInterruptedError(), RuntimeError("pipes closed"))
    assert ended_on_purpose(cleanup_error) is not None
    assert "interrupted" in (ended_on_purpose(KeyboardInterrupt()) or "")
    assert ended_on_purpose(RunEndedError("the run is CANCELED")) == "the run is CANCELED"
    assert ended_on_purpose(chained(ValueError("rank 1 failed"), RuntimeError("x"))) is None

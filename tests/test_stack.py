"""The stack in one command (deploy/up.sh: supervisord running deploy/supervisord.conf on a
PostgreSQL instance and the local RabbitMQ) and `lepton health`, which names the part that
is down."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from lepton_core.models import build_model, save_model
from lepton_core.registry import promote
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import stop_processes_with

from .conftest import digits_model_info
from .load import wait_ready
from .services import instance_env
from .test_postgres import throwaway_db  # noqa: F401  (the fixture)
from .test_s3 import free_port
from .test_web_proxy import crypt

# Celery tests share RabbitMQ's "dagster" queue (purged at start): one worker runs them in turn.
pytestmark = pytest.mark.xdist_group("celery_queue")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def health(env: dict[str, str], port: int, *extra: str) -> subprocess.CompletedProcess:
    command = [str(BIN / "lepton"), "health", "--webserver", f"http://127.0.0.1:{port}", *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
@pytest.mark.integration
def test_the_stack_starts_in_one_command_and_health_names_what_is_down(
    throwaway_db: str,  # noqa: F811
    tmp_path: Path,
):
    port, door, serve_port = free_port(), free_port(), free_port()
    users = tmp_path / "users"
    users.write_text(f"alice operator {crypt('alice-pw-1')}\n")
    store = ArtifactStore(f"file://{tmp_path / 'lepton' / 'artifacts'}")
    info = digits_model_info("mlp")
    save_model(store, "models/m/fp32", build_model(info), info)
    promote(store, {"model_prefix": "models/m/fp32"}, "stack")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEPTON_", "DAGSTER_"))}
    env |= {
        **instance_env(tmp_path / "dagster_home", throwaway_db),
        "LEPTON_HOME": str(tmp_path / "lepton"),
        "LEPTON_WEB_PORT": str(door),
        "LEPTON_WEB_INTERNAL_PORT": str(port),
        "LEPTON_WEB_READ_ONLY_PORT": str(free_port()),
        "LEPTON_WEB_USERS": str(users),
        "LEPTON_SERVE_PORT": str(serve_port),
        "LEPTON_SERVE_REPLICAS": "2",
        # supervisord's control socket: a short path (a Unix socket path has ~100 bytes)
        "LEPTON_LOG_DIR": tempfile.mkdtemp(prefix="lepton-stack-"),
    }
    subprocess.run(["rabbitmqctl", "purge_queue", "dagster"], capture_output=True)
    log = (tmp_path / "stack.log").open("w")
    stack = subprocess.Popen(
        [str(ROOT / "deploy" / "up.sh")],
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    env["LEPTON_EXECUTOR"] = "celery"  # what up.sh sets for the processes it starts
    try:
        deadline = time.monotonic() + 240
        while (report := health(env, port)).returncode != 0:
            assert stack.poll() is None, (tmp_path / "stack.log").read_text()[-3000:]
            assert time.monotonic() < deadline, report.stdout
            time.sleep(3)
        lines = report.stdout.splitlines()
        assert [line.split()[0] for line in lines][:2] == ["instance", "webserver"]
        assert all("up" in line.split() for line in lines)
        assert "PostgresRunStorage" in report.stdout and "worker-" in report.stdout
        # The UI's door wants a password (tests/test_web_proxy.py tries the rest of it).
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{door}/", timeout=10)
        assert refused.value.code == 401
        # The worker's settings file holds the broker URL (and so its password): private.
        home = Path(env["DAGSTER_HOME"])
        (settings,) = home.glob("dagster_celery/config/*/dagster_celery_config.py")
        assert "broker_url" in settings.read_text()
        assert settings.stat().st_mode & 0o077 == 0, oct(settings.stat().st_mode)
        # The champion is served by two replicas behind HAProxy.
        wait_ready(f"http://127.0.0.1:{serve_port}", [stack], seconds=120, times=10)
        row = json.dumps({"rows": [{f"pixel_{i:02d}": 1 for i in range(64)}]}).encode()
        answer = urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/predict", row, 30)
        assert json.loads(answer.read())["model_version"] == "m.fp32"
        assert len(store.list("serving/replicas")) == 2

        # The worker stopped: the stack is unhealthy and health says which part; started
        # again, all is well.
        control = [str(BIN / "supervisorctl"), "-c", str(ROOT / "deploy" / "supervisord.conf")]
        subprocess.run([*control, "stop", "worker"], env=env, check=True, timeout=90)
        report = health(env, port)
        assert report.returncode == 1
        down = [line for line in report.stdout.splitlines() if "DOWN" in line]
        assert len(down) == 1 and down[0].startswith("celery workers"), report.stdout
        subprocess.run([*control, "start", "worker"], env=env, check=True, timeout=90)
        deadline = time.monotonic() + 90
        while (report := health(env, port)).returncode != 0:
            assert time.monotonic() < deadline, report.stdout
            time.sleep(3)

        # The daemon stopped: its heartbeats stop, and health says so within the bound given
        # (Dagster itself would call it healthy for 30 minutes).
        subprocess.run([*control, "stop", "daemon"], env=env, check=True, timeout=90)
        stopped, deadline = time.monotonic(), time.monotonic() + 120
        while (report := health(env, port, "--daemon-stale-s", "40")).returncode == 0:
            assert time.monotonic() < deadline, report.stdout
            time.sleep(3)
        down = [line for line in report.stdout.splitlines() if "DOWN" in line]
        assert len(down) == 1 and down[0].startswith("daemon"), report.stdout
        assert "no heartbeat within 40 s from" in down[0] and time.monotonic() - stopped < 75
        subprocess.run([*control, "start", "daemon"], env=env, check=True, timeout=90)
        deadline = time.monotonic() + 90
        while (report := health(env, port, "--daemon-stale-s", "40")).returncode != 0:
            assert time.monotonic() < deadline, report.stdout
            time.sleep(3)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(stack.pid, signal.SIGTERM)
        try:
            stack.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(stack.pid, signal.SIGKILL)
        stop_processes_with("DAGSTER_HOME", env["DAGSTER_HOME"])
        subprocess.run(["rabbitmqctl", "purge_queue", "dagster"], capture_output=True)
        shutil.rmtree(env["LEPTON_LOG_DIR"], ignore_errors=True)


def test_the_compose_file_names_every_part_and_holds_no_secret():
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    for part in ("postgres", "rabbitmq", "minio", "code", "webserver", "daemon", "worker"):
        assert part in services, part
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)
        for key, value in (service.get("environment") or {}).items():
            if "PASSWORD" in key or "SECRET" in key:
                assert str(value).startswith("${"), (name, key)

"""The door in front of the Dagster UI (deploy/web_proxy.sh on Debian's HAProxy): nobody in
without a password, viewers on a read-only webserver, and no mutation by GET or from another
origin, whoever sends it. Real webservers, a real HAProxy, on 127.0.0.1."""

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from .test_s3 import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
STOP_SENSOR = """mutation { stopSensor(id: "%s") { __typename
  ... on UnauthorizedError { message } } }"""
SENSOR_ID = """{ sensorOrError(sensorSelector: {repositoryLocationName: "lepton",
  repositoryName: "__repository__", sensorName: "landing_sensor"}) { ... on Sensor { id } } }"""
USERS = {"alice": ("operator", "alice-pw-1"), "bob": ("viewer", "bob-pw-2")}
pytestmark = [
    pytest.mark.slow,
    pytest.mark.integration,
    pytest.mark.xdist_group("web_proxy"),  # one worker: the webservers and HAProxy start once
    pytest.mark.skipif(not Path(HAPROXY).exists(), reason="needs HAProxy (setup.sh --test)"),
]


def crypt(password: str) -> str:
    done = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password,
                          capture_output=True, text=True, check=True)  # fmt: skip
    return done.stdout.strip()


def call(port: int, path: str, body: dict | None = None, user: str | None = None,
         headers: dict | None = None) -> tuple[int, dict | str]:  # fmt: skip
    """(status, JSON or text) of one request to the proxy; POST when there is a body."""
    data = json.dumps(body).encode() if body is not None else None
    sent = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers=sent)
    if user:
        token = base64.b64encode(f"{user}:{USERS[user][1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    return status, json.loads(text) if text.startswith("{") else text


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    tmp = tmp_path_factory.mktemp("web")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEPTON_", "DAGSTER_"))}
    env |= {"LEPTON_HOME": str(tmp / "lepton"), "DAGSTER_HOME": str(tmp / "dagster_home")}
    Path(env["DAGSTER_HOME"]).mkdir()
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], env=env, check=True,
                   capture_output=True)  # fmt: skip
    users = tmp / "users"
    users.write_text("".join(f"{n} {role} {crypt(pw)}\n" for n, (role, pw) in USERS.items()))
    port, rw, ro = free_port(), free_port(), free_port()
    config = tmp / "web.cfg"
    with config.open("w") as fh:
        subprocess.run(["bash", "deploy/web_proxy.sh", str(users), str(port), str(rw), str(ro)],
                       cwd=ROOT, stdout=fh, check=True)  # fmt: skip
    web = [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-w", "workspace.yaml", "-p"]
    processes = [
        start([*web, str(rw)], env, tmp / "rw.log"),
        start([*web, str(ro), "--read-only"], env, tmp / "ro.log"),
        start([HAPROXY, "-db", "-f", str(config)], env, tmp / "haproxy.log"),
    ]
    try:
        deadline = time.monotonic() + 180
        while not loaded(port):
            for process in processes:
                assert process.poll() is None, f"{process.args!r} exited: see {tmp}"
            assert time.monotonic() < deadline, "the webservers did not load in 180 s"
            time.sleep(0.5)
        yield port
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=30)


def loaded(port: int) -> bool:
    """Both webservers answer through the proxy with the code location loaded."""
    try:
        return all(
            call(port, "/graphql", {"query": SENSOR_ID}, user)[1]["data"]["sensorOrError"]  # type: ignore[index]
            for user in USERS
        )
    except (OSError, TypeError, KeyError):
        return False


def sensor_id(port: int) -> str:
    status, body = call(port, "/graphql", {"query": SENSOR_ID}, "alice")
    assert status == 200 and isinstance(body, dict)
    return body["data"]["sensorOrError"]["id"]


def test_without_credentials_every_page_and_graphql_is_401(proxy: int):
    for path in ("/", "/graphql", "/server_info", "/assets", "/locations"):
        assert call(proxy, path)[0] == 401, path
    assert call(proxy, "/graphql", {"query": SENSOR_ID})[0] == 401
    bad = base64.b64encode(b"alice:wrong").decode()
    assert call(proxy, "/", headers={"Authorization": f"Basic {bad}"})[0] == 401


def test_a_viewer_reads_but_its_mutation_is_refused_and_an_operators_works(proxy: int):
    mutation = {"query": STOP_SENSOR % sensor_id(proxy)}
    status, body = call(proxy, "/graphql", mutation, "bob")
    assert status == 200 and isinstance(body, dict)
    assert body["data"]["stopSensor"]["__typename"] == "UnauthorizedError"
    status, body = call(proxy, "/graphql", mutation, "alice")
    assert status == 200 and isinstance(body, dict)
    assert body["data"]["stopSensor"]["__typename"] == "StopSensorMutationResult"


def test_a_mutation_by_get_or_from_another_origin_is_refused_even_for_an_operator(proxy: int):
    query = urllib.parse.urlencode({"query": STOP_SENSOR % sensor_id(proxy)})
    assert call(proxy, f"/graphql?{query}", user="alice")[0] == 405
    mutation = {"query": STOP_SENSOR % sensor_id(proxy)}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"},
                    {"Sec-Fetch-Site": "cross-site"}):  # fmt: skip
        assert call(proxy, "/graphql", mutation, "alice", headers)[0] == 403, headers
    same = {"Origin": f"http://127.0.0.1:{proxy}"}
    assert call(proxy, "/graphql", {"query": SENSOR_ID}, "alice", same)[0] == 200


def test_a_users_file_line_of_another_shape_is_refused_naming_it(tmp_path: Path):
    users = tmp_path / "users"
    users.write_text(f"alice operator {crypt('x')}\neve admin\nmallory operator x\\nuser\n")
    done = subprocess.run(["bash", "deploy/web_proxy.sh", str(users), "1", "2", "3"], cwd=ROOT,
                          capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 2 and "line 2 is not" in done.stderr and done.stdout == ""

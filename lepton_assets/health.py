"""`lepton health`: which part of a running Lepton stack is down.

Each part is checked through its own client, never assumed: the Dagster instance's storage
(a run query), the webserver (``/server_info``), the code location and the daemon (the
webserver's GraphQL), the artifact store (a listing), the id index (a query), the Celery
broker (a connection) and its workers (a ping). A part that is not configured (no broker
without ``LEPTON_EXECUTOR=celery``) is not checked. URLs in messages have their passwords
hidden.
"""

import json
import os
import time
import urllib.request
from collections.abc import Callable

import dagster as dg
from kombu import Connection

from lepton_assets.executors import BROKER_VARIABLE, DEFAULT_BROKER, EXECUTOR_VARIABLE
from lepton_core.id_index import redacted
from resources.artifact_store import ArtifactStoreResource

DAEMON_QUERY = (
    "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required "
    "lastHeartbeatTime } } } }"
)
# Dagster's daemons beat every 30 s, but Dagster calls one unhealthy only after 30 minutes
# without a beat; a daemon stopped by a signal under `dagster dev` can linger that long
# doing nothing. Three missed beats are enough to say it is down.
DAEMON_STALE_S = 90.0
LOCATIONS_QUERY = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name "
    "locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


def graphql(webserver: str, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"{webserver}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())["data"]


def check_instance() -> str:
    with dg.DagsterInstance.get() as instance:
        instance.get_runs(limit=1)
        return type(instance.run_storage).__name__


def check_webserver(webserver: str) -> str:
    with urllib.request.urlopen(f"{webserver}/server_info", timeout=10) as response:
        return f"dagster-webserver {json.loads(response.read())['dagster_webserver_version']}"


def check_code_locations(webserver: str) -> str:
    entries = graphql(webserver, LOCATIONS_QUERY)["workspaceOrError"]["locationEntries"]
    if not entries:
        raise RuntimeError("no code location in the workspace")
    broken = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
    if broken:
        first = broken[0]["locationOrLoadError"]["message"].splitlines()[0]
        raise RuntimeError(f"{broken[0]['name']} does not load: {first}")
    return ", ".join(e["name"] for e in entries)


def check_daemon(webserver: str, stale_s: float = DAEMON_STALE_S) -> str:
    """Every required daemon beat within ``stale_s`` seconds (and Dagster calls it healthy)."""
    statuses = graphql(webserver, DAEMON_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    now, down = time.time(), []
    for status in (s for s in statuses if s["required"]):
        last = status["lastHeartbeatTime"]
        if last is None or not status["healthy"] or now - last > stale_s:
            age = "never" if last is None else f"{now - last:.0f} s ago"
            down.append(f"{status['daemonType']} (last beat {age})")
    if down:
        raise RuntimeError(
            f"no heartbeat within {stale_s:.0f} s from {', '.join(down)}: restart dagster-daemon"
        )
    return f"{sum(s['required'] for s in statuses)} daemons beating"


def check_artifacts() -> str:
    store = ArtifactStoreResource().get_store()
    store.list("current")
    return store.uri


def check_id_index() -> str:
    index = ArtifactStoreResource().get_id_index()
    try:
        index.days()
        return repr(index)
    finally:
        index.dispose()


def broker_url() -> str:
    return os.environ.get(BROKER_VARIABLE) or DEFAULT_BROKER


def check_broker() -> str:
    with Connection(broker_url(), connect_timeout=5) as connection:
        connection.ensure_connection(max_retries=1)
    return redacted(broker_url())


def check_workers() -> str:
    from dagster_celery.make_app import make_app

    app = make_app({"broker": broker_url(), "backend": "rpc://"})
    replies = app.control.ping(timeout=3)
    if not replies:
        raise RuntimeError(f"no Celery worker answered a ping on {redacted(broker_url())}")
    return ", ".join(sorted(name for reply in replies for name in reply))


def checks(webserver: str, daemon_stale_s: float) -> dict[str, Callable[[], str]]:
    parts: dict[str, Callable[[], str]] = {
        "instance": check_instance,
        "webserver": lambda: check_webserver(webserver),
        "code location": lambda: check_code_locations(webserver),
        "daemon": lambda: check_daemon(webserver, daemon_stale_s),
        "artifact store": check_artifacts,
        "id index": check_id_index,
    }
    if os.environ.get(EXECUTOR_VARIABLE) == "celery":
        parts |= {"celery broker": check_broker, "celery workers": check_workers}
    return parts


def health(webserver: str, daemon_stale_s: float | None = None) -> dict[str, tuple[bool, str]]:
    """Each part: (up, what answered or why it is down)."""
    report = {}
    stale = DAEMON_STALE_S if daemon_stale_s is None else daemon_stale_s
    for name, check in checks(webserver, stale).items():
        try:
            report[name] = (True, check())
        except Exception as exc:  # noqa: BLE001  (each failure is reported, none is hidden)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            report[name] = (False, f"{type(exc).__name__}: {reason}")
    return report

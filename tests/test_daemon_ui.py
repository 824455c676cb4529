"""Dagster for real: the webserver and the daemon on loopback with a temporary home. A file
dropped into the landing zone must lead, with no further action, to a validated partition and
then a retrained, evaluated and promoted model, checked through Dagster's GraphQL API."""

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import dagster as dg
import psutil
import pytest

from lepton_assets.cli import EMBEDDED_DAGSTER_YAML_TEMPLATE
from lepton_assets.demo import seed_landing
from lepton_assets.health import graphql as webserver_graphql
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import (
    RUN_MARKER,
    WORKDIR_PREFIX,
    processes_with,
    stop_processes_with,
)
from schedules.sensors import failed_checks, failure_alert, run_failure_reason

from .services import wait_for
from .test_s3 import free_port

# One worker runs this module: its webserver and daemon start once (module fixture).
pytestmark = pytest.mark.xdist_group("dagster_services")

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RUNS_QUERY = """
query SensorRuns {
  runsOrError(filter: {tags: [{key: "dagster/sensor_name", value: "%s"}]}) {
    ... on Runs { results { runId status tags { key value } } }
  }
}"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    return webserver_graphql(f"http://127.0.0.1:{port}", query, variables)


READY_QUERY = """
{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } }
  instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"""


def usable(port: int, processes: dict[str, subprocess.Popen], logs: Path) -> bool:
    """True once the webserver answers, the code location has loaded and every required
    daemon has a healthy heartbeat; fails at once with the service's own error when a
    process died or the code location failed to load."""
    for name, process in processes.items():
        if process.poll() is not None:
            tail = (logs / f"{name}.log").read_text()[-3000:]
            pytest.fail(f"dagster {name} exited with {process.returncode}:\n{tail}")
    try:
        data = graphql(port, READY_QUERY)
    except OSError:
        return False
    entries = data["workspaceOrError"]["locationEntries"]
    for entry in entries:
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            pytest.fail(f"code location {entry['name']} failed to load: {loaded['message']}")
    daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    loaded = bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)
    return loaded and all(d["healthy"] for d in daemons if d["required"])


def wait_usable(port: int, processes: dict[str, subprocess.Popen], logs: Path) -> None:
    wait_for(lambda: usable(port, processes, logs), 180, "the webserver and daemon to be usable")


@pytest.fixture(scope="module")
def dagster_services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """dagster-webserver and dagster-daemon on this project, each in its own process group."""
    with running_services(tmp_path_factory.mktemp("services")) as started:
        yield started


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(
    not os.environ.get("LEPTON_STARTUP_TRIES"),
    reason="a soak: set LEPTON_STARTUP_TRIES=20 to start the services on fresh homes that often",
)
def test_the_services_start_usable_on_a_fresh_home_every_time(tmp_path: Path):
    for attempt in range(int(os.environ["LEPTON_STARTUP_TRIES"])):
        with running_services(tmp_path / f"try-{attempt}") as (port, _):
            assert graphql(port, READY_QUERY)["workspaceOrError"]["locationEntries"]


@contextlib.contextmanager
def running_services(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Both services on a new home under ``tmp_path``, usable; stopped, with all they
    started, on exit."""
    home = tmp_path / "lepton"
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True)
    # Sensors tick, and run monitoring checks and frees slots, every 2 s instead of 30-60 s.
    (dagster_home / "dagster.yaml").write_text(EMBEDDED_DAGSTER_YAML_TEMPLATE.format(monitor_s=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEPTON_")}
    env.update(LEPTON_HOME=str(home), DAGSTER_HOME=str(dagster_home), PYTHONUNBUFFERED="1",
               LEPTON_SENSOR_INTERVAL_S="2")  # fmt: skip
    port = free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    # The schema first, by one process: two opening a new SQLite home at once both create it,
    # and the code location then fails to load ("more than one head", dagster-io/dagster#27390).
    subprocess.run([str(BIN / "dagster"), "instance", "migrate"], cwd=ROOT, env=env, check=True,
                   capture_output=True)  # fmt: skip
    commands = {
        "webserver": [
            str(BIN / "dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "workspace.yaml",
        ],
        "daemon": [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
    }
    processes = [
        subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            start_new_session=True,
            stdout=(logs / f"{name}.log").open("w"),
            stderr=subprocess.STDOUT,
        )
        for name, command in commands.items()
    ]
    try:
        wait_usable(port, dict(zip(commands, processes, strict=True)), logs)
        yield port, home
    finally:
        # The whole groups: the runs the daemon launched (retraining, say) go with it.
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        # And what left the groups (code servers, run workers): found by their home.
        stop_processes_with("DAGSTER_HOME", str(dagster_home))


@pytest.mark.integration
@pytest.mark.slow
def test_a_dropped_file_is_ingested_by_the_sensor_through_the_daemon(dagster_services):
    port, home = dagster_services
    seed_landing(ArtifactStore(f"file://{home / 'landing'}"), days=1, end=date(2026, 1, 1))

    def succeeded(sensor: str) -> dict | None:
        runs = graphql(port, RUNS_QUERY % sensor)["runsOrError"]["results"]
        failed = [r for r in runs if r["status"] in ("FAILURE", "CANCELED")]
        assert not failed, f"{sensor} run failed: {failed}"
        return next((r for r in runs if r["status"] == "SUCCESS"), None)

    run = wait_for(lambda: succeeded("landing_sensor"), 300, "a successful landing_sensor run")
    tags = {t["key"]: t["value"] for t in run["tags"]}
    assert tags["dagster/partition"] == "2026-01-01"
    artifacts = ArtifactStore(f"file://{home / 'artifacts'}")
    assert artifacts.read_json("validated/2026-01-01.json")["check_passed"]

    # With no further action: retraining, compression, evaluation and (blessed) promotion.
    wait_for(lambda: succeeded("retraining_sensor"), 400, "a successful retraining run")
    champion = artifacts.read_json("champion/current.json")
    assert champion["action"] == "promote" and artifacts.exists(
        f"{champion['model_prefix']}/model.pt"
    )


GROUPS = {
    "ingestion": ["raw_batches"],
    "validation": ["validated_batches"],
    "training": ["training_dataset", "trained_model"],
    "compression": ["compressed_model"],
    "evaluation": ["evaluation_report", "champion_model"],
}


@pytest.mark.integration
def test_the_asset_graph_shows_the_lifecycle_in_a_real_browser(dagster_services):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    port, _ = dagster_services
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1600,1000",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    output = ROOT / "test-output"
    output.mkdir(exist_ok=True)

    def show(path: str, names: list[str], picture: str) -> None:
        browser.get(f"http://127.0.0.1:{port}{path}")
        wait_for(lambda: all(n in browser.page_source for n in names), 90, f"{names} on {path}")
        time.sleep(2)  # the graph's layout settles, and the UI's welcome dialog appears
        for skip in browser.find_elements(By.XPATH, "//button[normalize-space()='Skip']"):
            skip.click()
        time.sleep(1)
        shot = output / picture
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    try:
        # The global lineage shows one node per group; each group's page shows its assets.
        show("/asset-groups", list(GROUPS), "asset_graph.png")
        for group, assets in GROUPS.items():
            show(f"/locations/lepton/asset-groups/{group}/lineage", assets, f"group_{group}.png")
    finally:
        browser.quit()


LAUNCH = """
mutation Launch($config: RunConfigData) {
  launchRun(executionParams: {
    selector: {repositoryLocationName: "lepton", repositoryName: "__repository__",
               jobName: "training_job"},
    runConfigData: $config
  }) { __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } }
}"""
RUN = """
query Run($id: ID!) {
  runOrError(runId: $id) { ... on Run { status eventConnection { events { __typename } } } }
}"""


def launch_training(port: int, epochs: int) -> str:
    config = {"ops": {"trained_model": {"config": {"epochs": epochs, "patience": 0}}}}
    result = graphql(port, LAUNCH, {"config": config})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return result["run"]["runId"]


def terminate(port: int, run_id: str) -> str:
    """What the UI's Terminate button sends; the result's type."""
    mutation = "mutation Stop($id: String!) { terminateRun(runId: $id) { __typename } }"
    return graphql(port, mutation, {"id": run_id})["terminateRun"]["__typename"]


def run_state(port: int, run_id: str) -> tuple[str, list[str]]:
    run = graphql(port, RUN, {"id": run_id})["runOrError"]
    return run["status"], [e["__typename"] for e in run["eventConnection"]["events"]]


def ranks_of(run_id: str) -> list[psutil.Process]:
    """The run's Horovod ranks: its marker, and a rank number (horovodrun has none)."""

    def is_rank(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return "HOROVOD_RANK" in process.environ()
        return False

    return [p for p in processes_with(RUN_MARKER, run_id) if is_rank(p)]


def launch_chain(run_id: str) -> dict[str, psutil.Process]:
    """The processes above one of the run's ranks: rank <- sh <- middleman <- horovodrun <-
    step process <- run worker <- code server."""
    chain = [ranks_of(run_id)[0]]
    while (parent := chain[-1].parent()) is not None:
        chain.append(parent)
    names = [" ".join(p.cmdline()) for p in chain]
    launcher = next(i for i, name in enumerate(names) if "horovodrun" in name)
    assert "spawn_main" in names[launcher + 1], names  # the executor's step process
    assert "dagster api grpc" in names[launcher + 3], names
    return {"step": chain[launcher + 1], "run worker": chain[launcher + 2]}


def alert_summary(dagster_home: Path, run_id: str) -> str:
    """The failure alert's one-line summary for a run, built from the instance's events as
    failure_alert_sensor builds it."""
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        events = [r.dagster_event for r in instance.all_logs(run_id) if r.dagster_event]
        failure = [e for e in events if e.is_run_failure][-1]
        steps = [e for e in events if e.is_step_failure]
        checks = failed_checks(instance, run_id)
        reason = run_failure_reason(instance, run_id, failure.message or "")
        return failure_alert(run, steps, checks, reason)["summary"]


def workdirs_of(step: psutil.Process) -> list[Path]:
    """The Horovod work folders the step's launcher made (one, while it trains)."""
    found = list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{step.pid}-*"))
    assert found, f"no work folder of step process {step.pid}"
    return found


def training_run_with_ranks(port: int, home: Path) -> str:
    """A training run launched from the UI's API, once both of its ranks are up."""
    ensure_validated_day(home)
    run_id = launch_training(port, epochs=500)
    wait_for(lambda: len(ranks_of(run_id)) == 2, 300, "two training ranks")
    return run_id


def ensure_validated_day(home: Path) -> None:
    """A validated day to train on; the first test of this module leaves one, and when it
    ran already this does nothing."""
    artifacts = ArtifactStore(f"file://{home / 'artifacts'}")
    if not artifacts.exists("validated/2026-01-01.json"):
        seed_landing(ArtifactStore(f"file://{home / 'landing'}"), days=1, end=date(2026, 1, 1))
        wait_for(lambda: artifacts.exists("validated/2026-01-01.json"), 300, "a validated day")


@pytest.mark.integration
@pytest.mark.slow
def test_terminate_from_the_ui_stops_every_rank_without_a_retry(dagster_services):
    port, home = dagster_services
    run_id = training_run_with_ranks(port, home)
    workdirs = workdirs_of(launch_chain(run_id)["step"])
    assert terminate(port, run_id) == "TerminateRunSuccess"
    wait_for(lambda: not ranks_of(run_id), 30, "every rank to exit")
    wait_for(lambda: run_state(port, run_id)[0] == "CANCELED", 60, "the run to be CANCELED")
    assert "ExecutionStepUpForRetryEvent" not in run_state(port, run_id)[1]
    assert not [w for w in workdirs if w.exists()]


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_run_worker_takes_its_ranks_and_frees_the_training_slot(dagster_services):
    port, home = dagster_services
    run_id = training_run_with_ranks(port, home)
    chain = launch_chain(run_id)
    workdirs = workdirs_of(chain["step"])
    chain["run worker"].kill()
    wait_for(lambda: run_state(port, run_id)[0] == "FAILURE", 120, "the run to be marked FAILURE")
    wait_for(lambda: not ranks_of(run_id), 60, "every rank to exit")
    # The failure alert leads with why the run failed (its worker died), not with what the
    # training step saw (its run ending under it).
    summary = alert_summary(home / "dagster_home", run_id)
    expected = f"Run execution process for {run_id} was terminated by signal 9 (SIGKILL)."
    assert f"({run_id[:8]}): [DagsterApiServer] {expected}" in summary, summary
    assert "Horovod job was stopped" not in summary
    artifacts = ArtifactStore(f"file://{home / 'artifacts'}")
    assert not artifacts.exists(f"runs/{run_id}/trained_model.json")
    # The pool slot of the dead run is freed: the next training run gets to train.
    next_run = launch_training(port, epochs=500)
    wait_for(lambda: len(ranks_of(next_run)) == 2, 240, "the next run's ranks")
    assert not [w for w in workdirs if w.exists()]  # the next launch removed the dead one's
    assert terminate(port, next_run) == "TerminateRunSuccess"
    wait_for(lambda: not ranks_of(next_run), 60, "the next run's ranks to exit")


@pytest.mark.integration
@pytest.mark.slow
def test_a_killed_step_process_takes_its_ranks_and_its_retry_trains_alone(dagster_services):
    """kill -9 of the training step's process: its ranks die with it, the retry policy's
    next attempt trains alone (never more than two ranks), the killed attempt's work folder
    is removed, and a terminate then ends the run with no model written for it."""
    port, home = dagster_services
    run_id = training_run_with_ranks(port, home)
    first = ranks_of(run_id)
    step = launch_chain(run_id)["step"]
    workdirs = workdirs_of(step)
    step.kill()
    most = 0

    def retry_ranks_up() -> bool:
        nonlocal most
        ranks = ranks_of(run_id)
        most = max(most, len(ranks))
        return len(ranks) == 2 and not {p.pid for p in ranks} & {p.pid for p in first}

    wait_for(retry_ranks_up, 300, "the retry's two ranks")
    assert most == 2
    assert not any(p.is_running() for p in first)
    assert not [w for w in workdirs if w.exists()]
    assert terminate(port, run_id) == "TerminateRunSuccess"
    wait_for(lambda: not ranks_of(run_id), 60, "every rank to exit")
    wait_for(lambda: run_state(port, run_id)[0] == "CANCELED", 60, "the run to be CANCELED")
    time.sleep(5)  # time for a stray rank, had one survived, to write
    artifacts = ArtifactStore(f"file://{home / 'artifacts'}")
    assert not artifacts.exists(f"runs/{run_id}/trained_model.json")

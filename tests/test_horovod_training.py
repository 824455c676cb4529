"""Horovod jobs for real: the launcher's failure handling, a killed rank, a retry that resumes."""

import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psutil
import pytest

from lepton_assets.compression import compressed_model
from lepton_assets.definitions import resources
from lepton_assets.evaluation import evaluation_report
from lepton_assets.training import trained_model
from lepton_core.keys import current_key, run_pointer_key
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import (
    WORKDIR_PREFIX,
    HorovodJobError,
    HorovodLauncherResource,
    failure_message,
)

from .services import wait_for


def test_failure_message_names_the_first_failed_rank_and_its_last_lines(tmp_path: Path):
    (tmp_path / "rank.1").mkdir(parents=True)
    (tmp_path / "rank.1" / "stderr").write_text("\n".join(f"line {i}" for i in range(100)))
    (tmp_path / "rank.0").mkdir()
    (tmp_path / "rank.0" / "stderr").write_text("rank zero was fine\n")
    output = "Process 1 exit with status code -9.\nProcess 0 exit with status code 143.\n"
    message = failure_message(output, tmp_path, [])
    assert message.startswith("Horovod rank 1 failed (killed by SIGKILL)")
    assert "line 99" in message and "line 69" not in message
    assert "rank zero" not in message


def test_without_rank_files_the_message_shows_the_launcher_output(tmp_path: Path):
    message = failure_message("Process 0 exit with status code 1.", tmp_path, ["Traceback", "Boom"])
    assert message.splitlines()[0] == "Horovod rank 0 failed (exit code 1); the job was stopped."
    assert message.splitlines()[-2:] == ["Traceback", "Boom"]


@pytest.mark.slow
def test_a_single_process_job_runs_the_code_the_step_imported(
    artifacts: ArtifactStore,
    dataset_version: str,
    instance: dg.DagsterInstance,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    # Started from a folder that holds another lepton_core (another checkout, say), the rank
    # still imports the one this process imported.
    decoy = tmp_path / "elsewhere" / "lepton_core"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("raise ImportError('the decoy lepton_core was imported')\n")
    monkeypatch.chdir(decoy.parent)
    result = dg.materialize(
        [trained_model],
        resources={**resources, "horovod": HorovodLauncherResource(num_processes=1)},
        instance=instance,
        run_config={"ops": {"trained_model": {"config": {"epochs": 2, "patience": 0}}}},
    )
    materialization = result.asset_materializations_for_node("trained_model")[0]
    assert materialization.metadata["processes"].value == 1
    assert materialization.metadata["epochs_run"].value == 2


def test_a_hung_job_is_stopped_at_the_timeout(tmp_path: Path):
    launcher = HorovodLauncherResource(timeout_s=2)
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    started = time.monotonic()
    with pytest.raises(HorovodJobError, match="exceeded timeout_s=2s"):
        launcher._run(sleeper, {}, tmp_path, context=None)  # type: ignore[arg-type]
    assert time.monotonic() - started < 30


def wait_for_checkpoint(artifacts: ArtifactStore) -> None:
    """Until a training job has written its first checkpoint (at most 120 s)."""
    checkpoints = artifacts.local_path("checkpoints")
    wait_for(lambda: list(checkpoints.rglob("latest.pt")), 120, "a checkpoint", step=0.05)


def worker_pid(rank: int) -> int | None:
    """The pid of this test's training rank ``rank``: among this process's descendants only,
    so a job of another test running beside this one is never touched."""
    for process in psutil.Process().children(recursive=True):
        try:
            cmdline = process.cmdline()
            if "lepton_core.train_worker" in cmdline and (
                process.environ().get("HOROVOD_RANK") == str(rank)
            ):
                return process.pid
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


@pytest.mark.slow
def test_a_killed_rank_fails_the_attempt_fast_and_the_retry_resumes_from_its_checkpoint(
    artifacts: ArtifactStore, dataset_version: str, instance: dg.DagsterInstance
):
    epochs = 40
    results: list[dg.ExecuteInProcessResult] = []
    run = threading.Thread(
        target=lambda: results.append(
            dg.materialize(
                [trained_model],
                resources={
                    **resources,
                    "horovod": HorovodLauncherResource(num_processes=2, collective_timeout_s=20),
                },
                instance=instance,
                run_config={
                    "ops": {"trained_model": {"config": {"epochs": epochs, "patience": 0}}}
                },
                raise_on_error=False,
            )
        )
    )
    run.start()
    wait_for_checkpoint(artifacts)
    pid = worker_pid(1)
    assert pid is not None, "rank 1 not found"
    psutil.Process(pid).kill()
    killed_at = time.time()
    run.join(timeout=300)
    assert not run.is_alive()
    result = results[0]
    assert result.success, "the retry should have finished the training"

    records = instance.all_logs(result.run_id)
    retries = [
        r
        for r in records
        if r.dagster_event and r.dagster_event.event_type_value == "STEP_UP_FOR_RETRY"
    ]
    assert len(retries) == 1
    error = retries[0].dagster_event.step_retry_data.error  # type: ignore[union-attr]
    assert error is not None
    text = error.message + "".join(c.message for c in [error.cause] if c)
    assert "Horovod rank 1 failed (exit code 137: killed by SIGKILL)" in text
    assert retries[0].timestamp - killed_at < 30, "the dead rank was not noticed in time"

    materialization = result.asset_materializations_for_node("trained_model")[0]
    resumed = materialization.metadata["resumed_from_epoch"].value
    assert isinstance(resumed, int) and 1 <= resumed < epochs
    history = materialization.metadata["history"].value
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))  # type: ignore[index,union-attr]
    digests = materialization.metadata["rank_param_sha256"].value
    assert isinstance(digests, list) and len(digests) == 2 and len(set(digests)) == 1


@pytest.mark.slow
def test_elastic_mode_trains_with_min_and_max_processes(
    artifacts: ArtifactStore, dataset_version: str, instance: dg.DagsterInstance
):
    result = dg.materialize(
        [trained_model],
        resources={
            **resources,
            "horovod": HorovodLauncherResource(num_processes=2, min_processes=1, max_processes=2),
        },
        instance=instance,
        run_config={"ops": {"trained_model": {"config": {"epochs": 3, "patience": 0}}}},
    )
    materialization = result.asset_materializations_for_node("trained_model")[0]
    assert materialization.metadata["processes"].value == 2
    assert materialization.metadata["epochs_run"].value == 3


@pytest.mark.slow
def test_the_same_data_config_and_seed_give_the_same_weights_and_variant(
    artifacts: ArtifactStore, dataset_version: str, instance: dg.DagsterInstance
):
    """Two runs, two Horovod processes each, same dataset, settings and seed: the trained
    weights are byte-identical and compression chooses the same variant with the same weights
    (CPU; see the README for GPU kernels). A third run with another seed differs, so the
    digests compared are live."""
    outcomes = []
    for seed in (0, 0, 1):
        config = {"epochs": 2, "patience": 0, "seed": seed}
        result = dg.materialize(
            [trained_model, compressed_model],
            resources=resources,
            instance=instance,
            run_config={"ops": {"trained_model": {"config": config}}},
        )
        assert result.success
        trained = artifacts.read_json("current/trained_model.json")["prefix"]
        chosen = artifacts.read_json("current/compressed_model.json")["prefix"]
        outcomes.append(
            (
                artifacts.read_json(f"{trained}/model.json")["sha256"],
                artifacts.read_json(f"{chosen}/model.json")["variant"],
                artifacts.read_json(f"{chosen}/model.json")["sha256"],
            )
        )
    assert outcomes[0] == outcomes[1]
    assert outcomes[2][0] != outcomes[0][0]


@pytest.mark.slow
def test_a_run_consumes_its_own_outputs_while_another_run_moves_current(
    artifacts: ArtifactStore,
    dataset_version: str,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    """Run B trains, compresses and evaluates; then run A does the same while, right after
    each of A's steps, B's output is put back in ``current/`` (as if B finished each step
    just then). Every step of A still consumes what A produced."""
    chain = [trained_model, compressed_model, evaluation_report]
    config = {
        "ops": {
            "trained_model": {"config": {"epochs": 1, "patience": 0}},
            # One epoch: the candidate need not be good, only evaluated.
            "evaluation_report": {"config": {"min_accuracy": 0.0}},
        }
    }
    assert dg.materialize(chain, resources=resources, instance=instance, run_config=config).success
    theirs = {a: artifacts.read_json(current_key(a)) for a in ("trained_model", "compressed_model")}
    write_json = ArtifactStore.write_json

    def meddle(self: ArtifactStore, key: str, obj: Any) -> str:
        digest = write_json(self, key, obj)
        asset = key.removeprefix("current/").removesuffix(".json")
        if key.startswith("current/") and asset in theirs:
            write_json(self, key, theirs[asset])
        return digest

    monkeypatch.setattr(ArtifactStore, "write_json", meddle)
    mine = dg.materialize(chain, resources=resources, instance=instance, run_config=config)
    monkeypatch.setattr(ArtifactStore, "write_json", write_json)
    assert mine.success
    trained = artifacts.read_json(run_pointer_key(mine.run_id, "trained_model"))["prefix"]
    compressed = artifacts.read_json(run_pointer_key(mine.run_id, "compressed_model"))
    report = artifacts.read_json(run_pointer_key(mine.run_id, "evaluation_report"))["prefix"]
    assert trained != theirs["trained_model"]["prefix"]
    assert compressed["source"] == trained
    evaluation = artifacts.read_json(f"{report}/evaluation.json")
    assert evaluation["candidate_model"] == compressed["prefix"]
    [materialization] = mine.asset_materializations_for_node("compressed_model")
    assert materialization.metadata["trained_model_from"].value == f"{trained} (run {mine.run_id})"
    # Materialized alone, a step takes the latest (B's, in current/) and says so.
    relaxed = {"ops": {"evaluation_report": config["ops"]["evaluation_report"]}}
    alone = dg.materialize(
        [evaluation_report], resources=resources, instance=instance, run_config=relaxed
    )
    [materialization] = alone.asset_materializations_for_node("evaluation_report")
    assert materialization.metadata["candidate_from"].value == (
        f"{theirs['compressed_model']['prefix']} (current)"
    )


@pytest.mark.slow
def test_a_rank_that_joins_an_elastic_job_stops_at_the_same_epoch_as_the_others(
    artifacts: ArtifactStore, dataset_version: str, instance: dg.DagsterInstance
):
    """Elastic Horovod: the job starts on one host; after its first checkpoint a second host
    appears and a new rank joins. The elastic state hands it the history, the best weights
    and the early-stopping counter, so both ranks stop at the same epoch and end equal."""
    results: list[dg.ExecuteInProcessResult] = []
    launcher = HorovodLauncherResource(
        num_processes=1, min_processes=1, max_processes=2, hosts="localhost:1",
        network_interface="lo", collective_timeout_s=30,
    )  # fmt: skip
    config = {"epochs": 40, "patience": 2, "learning_rate": 0.003}
    run = threading.Thread(
        target=lambda: results.append(
            dg.materialize(
                [trained_model],
                resources={**resources, "horovod": launcher},
                instance=instance,
                run_config={"ops": {"trained_model": {"config": config}}},
                raise_on_error=False,
            )
        )
    )
    run.start()
    wait_for_checkpoint(artifacts)
    [script] = Path(tempfile.gettempdir()).glob(
        f"{WORKDIR_PREFIX}{os.getpid()}-*/discover_hosts.sh"
    )
    hosts = script.with_name("hosts")  # what the discovery script prints
    hosts.write_text(hosts.read_text() + "127.0.0.1:1\n")
    run.join(timeout=300)
    assert not run.is_alive(), "the job did not finish: ranks stopped at different epochs?"
    assert results[0].success
    metadata = results[0].asset_materializations_for_node("trained_model")[0].metadata
    assert metadata["processes"].value == 2, "the second rank did not join"
    history = metadata["history"].value
    epochs_run = metadata["epochs_run"].value
    assert isinstance(history, list) and isinstance(epochs_run, int) and epochs_run < 40
    assert [h["epoch"] for h in history] == list(range(1, epochs_run + 1))  # type: ignore[index,union-attr]
    assert len(history[-1]["rank_peak_rss_mb"]) == 2  # type: ignore[index,arg-type]
    digests = metadata["rank_param_sha256"].value
    assert isinstance(digests, list) and len(digests) == 2 and len(set(digests)) == 1

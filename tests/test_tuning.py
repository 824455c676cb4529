"""Hyperparameter tuning: the search space's errors, trials as real Horovod jobs on two
processes, pruning, a crashing trial, a driver that died mid-trial, resuming, SQLite and
PostgreSQL study storage, and the trained model using the best configuration."""

import json
import shutil
import time
from pathlib import Path
from typing import Any

import dagster as dg
import optuna
import pytest
import yaml
from pydantic import ValidationError

from lepton_assets.definitions import resources
from lepton_assets.training import trained_model
from lepton_assets.tuning import tuned_config
from lepton_core import tuning
from lepton_core.evaluate import tuned_line
from lepton_core.keys import current_key
from lepton_core.spec import DIGITS_SPEC, ModelRef, TrainingSettings, TuningSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import TASKS

from .services import ROOT, instance_env, throwaway_database
from .test_postgres import count

# A user's factory whose ranks crash when asked to (the driver's check builds it fine).
USER_CODE = """
import os

from lepton_core.models import mlp


def build(info, widths=(32, 16), crash=False):
    if crash and "HOROVOD_RANK" in os.environ:
        raise RuntimeError("this trial's ranks crash on purpose")
    return mlp(info, list(widths))
"""

SPACE = {
    "learning_rate": {"low": 1e-3, "high": 3e-2, "log": True},
    "epochs": {"low": 1, "high": 3},
    "kwargs.widths": {"choices": [[32, 16], [8, 4]]},
    "kwargs.crash": {"choices": [False, True]},
}

# The trials' ends, pinned: the enqueued crash, then what TPESampler(seed=0) draws (trial 2
# draws kwargs.crash=True).
STATES = ["FAIL", "COMPLETE", "FAIL", "COMPLETE"]
STATE_AFTER_RESUME = "COMPLETE"


def test_a_bad_search_space_is_refused_naming_the_parameter():
    def refusal(space: dict, **extra: Any) -> str:
        with pytest.raises(ValidationError) as caught:
            TuningSettings.model_validate({"space": space, **extra})
        return str(caught.value)

    assert "the search space is empty" in refusal({})
    assert "unknown search parameters ['dropout']" in refusal({"dropout": {"choices": [0.1]}})
    assert "low (3) must be below high (2)" in refusal({"epochs": {"low": 3, "high": 2}})
    assert "a log scale needs low > 0 (got 0)" in refusal(
        {"learning_rate": {"low": 0, "high": 1, "log": True}}
    )
    assert "choices is empty" in refusal({"batch_size": {"choices": []}})
    assert "outside the search space: ['epochs']" in refusal(
        {"batch_size": {"choices": [8]}}, enqueue=[{"epochs": 2}]
    )
    assert "enqueue: epochs=5 is outside its search space" in refusal(
        {"epochs": {"low": 1, "high": 3}}, enqueue=[{"epochs": 5}]
    )
    space = TuningSettings.model_validate({"space": {"batch_size": {"choices": [16, 0]}}}).space
    assert tuning.check_space(space, TrainingSettings()) == [
        "batch_size: Input should be greater than or equal to 1 (got 0)"
    ]


def test_a_trials_values_are_typed_and_applied():
    settings = TuningSettings.model_validate({"space": SPACE})
    fixed = optuna.trial.FixedTrial(
        {"learning_rate": 0.01, "epochs": 2, "kwargs.widths": "[8, 4]", "kwargs.crash": False}
    )
    params = tuning.suggest(fixed, settings.space)
    assert params == {
        "learning_rate": 0.01, "epochs": 2, "kwargs.widths": [8, 4], "kwargs.crash": False
    }  # fmt: skip
    training, model = tuning.apply(params, TrainingSettings(batch_size=64), ModelRef(factory="m:b"))
    assert (training.learning_rate, training.epochs, training.batch_size) == (0.01, 2, 64)
    assert model.kwargs == {"widths": [8, 4], "crash": False}


def test_the_report_names_the_configuration():
    assert tuned_line(None) == "Hyperparameters: the project's (no tuning study)."
    tuned = {
        "study": "digits-v1", "trial": 3, "metric": "val_accuracy", "value": 0.9123456,
        "params": {"learning_rate": 0.004, "kwargs.widths": [8, 4]},
    }  # fmt: skip
    assert tuned_line(tuned) == (
        "Hyperparameters: tuned by study `digits-v1`, trial 3 (val_accuracy 0.91235 on "
        "validation): learning_rate=0.004, kwargs.widths=[8, 4]."
    )


def write_project(home: Path, **tuning_settings: Any) -> None:
    code = home / "code"
    code.mkdir(parents=True, exist_ok=True)
    (code / "user_model.py").write_text(USER_CODE)
    project = {
        "dataset": DIGITS_SPEC.model_dump(mode="json"),
        "model": {"factory": "user_model:build"},
        "code_path": "code",
        "training": {"batch_size": 64, "patience": 0},
        "tuning": {"space": SPACE, "pruner": "median", "heartbeat_s": 1, **tuning_settings},
    }
    (home / "lepton.yaml").write_text(yaml.safe_dump(project))


def study_trials(store: ArtifactStore, url: str) -> list[optuna.trial.FrozenTrial]:
    name = store.read_json(current_key("tuned_config"))["study"]
    return optuna.load_study(study_name=name, storage=tuning.storage(url, 1)).get_trials()


def assert_ended_as_its_params_say(trial: optuna.trial.FrozenTrial) -> None:
    """A crashing configuration failed with the ranks' error; any other completed with a
    value after its every epoch, or was pruned after some."""
    epochs, reported = trial.params["epochs"], sorted(trial.intermediate_values)
    if trial.params["kwargs.crash"]:
        assert trial.state.name == "FAIL" and "crash on purpose" in trial.user_attrs["error"]
    elif trial.state.name == "COMPLETE":
        assert reported == list(range(1, epochs + 1)) and trial.value is not None
    else:
        assert trial.state.name == "PRUNED", (trial.number, trial.state, trial.user_attrs)
        assert reported == list(range(1, len(reported) + 1)) and 0 < len(reported) < epochs


@pytest.fixture
def project_home(lepton_home: Path, dataset_version: str, monkeypatch: pytest.MonkeyPatch):
    """The digits as the current dataset, and a project file with a search space."""
    write_project(lepton_home, trials=4, enqueue=[{"kwargs.crash": True}])
    monkeypatch.setenv("LEPTON_PROJECT", str(lepton_home / "lepton.yaml"))
    return lepton_home


@pytest.mark.integration
def test_a_study_runs_trials_as_horovod_jobs_and_resumes_after_a_crash(
    project_home: Path, artifacts: ArtifactStore, dataset_version: str, instance
):
    result = dg.materialize([tuned_config], resources=resources, instance=instance)
    assert result.success
    url = f"sqlite:///{Path(instance.storage_directory()) / 'optuna.db'}"
    trials = study_trials(artifacts, url)
    states = [t.state.name for t in trials]
    # The enqueued crashing configuration came first: failed, with the ranks' error kept.
    assert states[0] == "FAIL" and len(trials) == 4
    assert "crash on purpose" in trials[0].user_attrs["error"]
    assert states == STATES  # the sampler is seeded: the same configurations every run
    for trial in trials:
        assert_ended_as_its_params_say(trial)
    # Every completed trial reported each epoch it ran, from rank 0 of a two-process job.
    for t in trials:
        if t.state.name == "COMPLETE":
            assert sorted(t.intermediate_values) == list(range(1, t.params["epochs"] + 1))
    meta = result.asset_materializations_for_node("tuned_config")[0].metadata
    assert meta["complete_trials"].value == states.count("COMPLETE")
    assert str(meta["trials"].value).count("\n") == 1 + 4  # header, rule, one line a trial
    best = artifacts.read_json(current_key("tuned_config"))
    assert best["value"] == max(t.value for t in trials if t.value is not None)
    assert artifacts.exists(f"tuning/{best['study']}/study.png")
    assert artifacts.read_json(f"tuning/{best['study']}/trial-1/job.json")["trial"]["study"]

    # A driver that died mid-trial: its trial stays RUNNING with a stale heartbeat.
    storage = tuning.storage(url, 1)
    study = optuna.load_study(study_name=best["study"], storage=storage)
    orphan = study.ask()
    storage.record_heartbeat(orphan._trial_id)
    time.sleep(2.5)  # two heartbeats missed
    write_project(project_home, trials=6)
    assert dg.materialize([tuned_config], resources=resources, instance=instance).success
    again = study_trials(artifacts, url)
    assert [t.number for t in again] == list(range(6))
    assert [t.state for t in again[:4]] == [t.state for t in trials]  # none rerun
    assert again[4].number == orphan.number and again[4].state.name == "FAIL"
    assert again[5].state.name == STATE_AFTER_RESUME  # a trial of its own, run to its end
    assert_ended_as_its_params_say(again[5])

    # The training step uses the best configuration and records which.
    tuned = artifacts.read_json(current_key("tuned_config"))
    assert dg.materialize([trained_model], resources=resources, instance=instance).success
    (prefix,) = [p for p in artifacts.files("models") if p.endswith("model.json")]
    info = artifacts.read_json(prefix)
    assert info["tuned"] == tuned
    assert info["kwargs"] == {"widths": tuned["params"]["kwargs.widths"], "crash": False}
    history = artifacts.read_json(prefix.replace("model.json", "history.json"))
    assert len(history) == tuned["params"]["epochs"]
    # With use_tuned off the project's own configuration trains, and says so.
    untuned = {"ops": {"trained_model": {"config": {"use_tuned": False, "epochs": 1}}}}
    assert dg.materialize(
        [trained_model], resources=resources, instance=instance, run_config=untuned
    ).success
    (newest,) = [p for p in artifacts.files("models") if p.endswith("model.json") and p != prefix]
    assert artifacts.read_json(newest)["tuned"] is None
    assert artifacts.read_json(newest)["kwargs"] == {}


def test_the_run_config_can_give_the_space_and_a_bad_one_fails_before_any_trial(
    lepton_home: Path, dataset_version: str, instance
):
    no_space = dg.materialize(
        [tuned_config], resources=resources, instance=instance, raise_on_error=False
    )
    assert not no_space.success
    assert "no search space: give the project a tuning: section" in failure(no_space)
    bad = {"ops": {"tuned_config": {"config": {"space": {"epochs": {"low": 3, "high": 2}}}}}}
    result = dg.materialize(
        [tuned_config], resources=resources, instance=instance, run_config=bad,
        raise_on_error=False,
    )  # fmt: skip
    assert "invalid tuning settings: space.epochs: Value error, low (3) must be below high (2)" in (
        failure(result)
    )


def failure(result: dg.ExecuteInProcessResult) -> str:
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(event.step_failure_data.error)


@pytest.mark.integration
def test_a_study_is_stored_in_the_instances_postgresql(
    project_home: Path, artifacts: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    write_project(project_home, trials=2, space={"epochs": {"choices": [1]}})
    home = tmp_path / "dagster_pg"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    with throwaway_database("lepton_tuning") as db:
        for key, value in instance_env(home, db).items():
            monkeypatch.setenv(key, value)
        with dg.DagsterInstance.get() as instance:
            url = instance.run_storage.postgres_url  # pyright: ignore[reportAttributeAccessIssue]
            assert dg.materialize([tuned_config], resources=resources, instance=instance).success
        trials = study_trials(artifacts, url)
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        assert not (home / "storage" / "optuna.db").exists()
        assert count(db, "SELECT count(*) FROM optuna.trials") == 2
        assert count(db, "SELECT count(*) FROM runs") == 1  # Dagster's, beside it
    # The instance's URL has a password ("unused": trust authentication); the job files name
    # the database without it, and the ranks got it from their environment.
    assert ":unused@" in url
    name = artifacts.read_json(current_key("tuned_config"))["study"]
    job_text = artifacts.read_text(f"tuning/{name}/trial-0/job.json")
    assert "unused" not in job_text
    assert json.loads(job_text)["trial"]["storage"] == url.replace(":unused@", "@")
    assert json.loads(json.dumps(trials[0].params)) == {"epochs": 1}


def test_the_study_direction_follows_the_task(tmp_path: Path):
    storage = tuning.storage(f"sqlite:///{tmp_path / 's.db'}", 1)
    settings = TuningSettings.model_validate({"space": {"epochs": {"low": 1, "high": 2}}})
    up = tuning.open_study(storage, "a", TASKS["classification"], settings, 2)
    down = tuning.open_study(storage, "b", TASKS["regression"], settings, 2)
    assert (up.direction.name, down.direction.name) == ("MAXIMIZE", "MINIMIZE")

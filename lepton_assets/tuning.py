"""Tuning: a hyperparameter study over real Horovod training runs, as Dagster work.

``tuned_config`` runs the project's ``tuning:`` study (``lepton_core/tuning.py``) on the
current training dataset: each trial is a training job launched exactly as ``trained_model``
launches one. The study is stored in the Dagster instance's database (PostgreSQL, or an
``optuna.db`` beside the SQLite instance), named after the dataset version, so a rerun on the
same data resumes it. The best configuration becomes the ``tuned_config`` pointer, which
``trained_model`` applies (under any run config value) and the evaluation report names.
"""

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg
import polars as pl
from pydantic import Field, ValidationError

from lepton_assets.compression import markdown_table
from lepton_assets.pointers import publish, upstream
from lepton_assets.training import check_user_code, run_job
from lepton_core.spec import Project, TuningSettings, worker_job
from lepton_core.store import ArtifactStore
from lepton_core.usercode import UserCodeError
from resources.artifact_store import ArtifactStoreResource
from resources.horovod_launcher import HorovodJobError, HorovodLauncherResource
from resources.project import ProjectResource

if TYPE_CHECKING:  # optuna and torch: imported by the tuning step, not by every process
    import optuna

    from lepton_core.tasks import Task


def study_storage(instance: dg.DagsterInstance) -> str:
    """The instance's own database: its PostgreSQL, else a SQLite file in its storage."""
    url = getattr(instance.run_storage, "postgres_url", None)
    if url:
        return url
    return f"sqlite:///{Path(instance.storage_directory()) / 'optuna.db'}"


class TuningConfig(dg.Config):
    """The study in the Launchpad: each field set here replaces the project's ``tuning:``
    value (``space`` whole); the settings model checks them."""

    space: dict[str, Any] | None = Field(
        default=None, description="parameter -> {low, high, log, step} or {choices}"
    )
    trials: int | None = None
    timeout_s: float | None = None
    pruner: str | None = Field(default=None, description="hyperband | median | none")
    heartbeat_s: int | None = None
    enqueue: list[dict[str, Any]] | None = None


def tuning_settings(user: Project, config: TuningConfig) -> TuningSettings:
    """The project's ``tuning:`` with the run config's values in place; a clear failure,
    naming each field, when the result is not a valid study (or there is none)."""
    values = {
        **(user.tuning.model_dump() if user.tuning else {}),
        **config.model_dump(exclude_none=True),
    }
    if "space" not in values:
        raise dg.Failure(
            description="no search space: give the project a tuning: section or the run "
            "config a space",
            allow_retries=False,
        )
    try:
        return TuningSettings.model_validate(values)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'tuning'}: {e['msg']}" for e in exc.errors()]
        raise dg.Failure(
            description=f"invalid tuning settings: {'; '.join(problems)}", allow_retries=False
        ) from exc


def trial_runner(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    study_ref: dict[str, Any],
    user: Project,
    dataset: dict[str, Any],
    horovod: HorovodLauncherResource,
    secrets: dict[str, str],
) -> "Callable[[optuna.Trial, dict[str, Any]], float]":
    """What runs one trial: its training job, launched as trained_model launches one."""
    from lepton_core import tuning
    from lepton_core.models import model_description

    def train(trial: "optuna.Trial", params: dict[str, Any]) -> float:
        settings, model = tuning.apply(params, user.training, user.model_ref)
        info = model_description(user.model_copy(update={"model": model}), dataset)
        try:
            check_user_code(info)
        except UserCodeError as exc:
            raise tuning.TrialFailed(str(exc)) from exc
        prefix = f"tuning/{study_ref['study']}/trial-{trial.number}"
        job = worker_job(settings, info, prefix, trial={**study_ref, "trial_id": trial._trial_id})
        try:
            run_job(context, store, horovod, f"{prefix}/job.json", job, secrets)
        except HorovodJobError as exc:
            raise tuning.TrialFailed(str(exc)) from exc
        outcome = store.read_json(f"{prefix}/trial.json")
        if outcome["pruned"]:
            raise tuning.TrialPruned()
        return outcome["value"]

    return train


@dg.asset(
    deps=["training_dataset"],
    group_name="training",
    kinds={"optuna", "horovod"},
    pool="horovod_training",
)
def tuned_config(
    context: dg.AssetExecutionContext,
    config: TuningConfig,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
    horovod: HorovodLauncherResource,
) -> dg.MaterializeResult:
    """The best training configuration the project's study found on the current dataset.

    Trials are real Horovod training runs; rank 0 reports the validation metric every epoch
    and the pruner (Hyperband by default) stops unpromising ones. The study is bounded by
    ``trials`` (counted over every run of it) and ``timeout_s``, resumes after a crash without
    repeating finished trials, and marks a trial whose driver died failed once it missed two
    heartbeats. Metadata: every trial (state, value, epochs, parameters, error) and a plot.
    """
    from lepton_core import tuning
    from lepton_core.data import read_dataset_info
    from lepton_core.tasks import task_of

    store = artifacts.get_store()
    user = project.get_project()
    settings = tuning_settings(user, config)
    problems = tuning.check_space(settings.space, user.training)
    if problems:
        raise dg.Failure(
            description=f"invalid search space: {'; '.join(problems)}", allow_retries=False
        )
    pointer, _ = upstream(store, context, "training_dataset")
    dataset = read_dataset_info(store, pointer["version"])
    task = task_of(user.dataset.task)
    name = f"{user.dataset.name}-{dataset['version']}"
    url = study_storage(context.instance)
    storage = tuning.storage(url, settings.heartbeat_s)
    # The job files name the database; its password reaches the ranks in the environment.
    public_url, password = tuning.without_password(url)
    secrets = {tuning.PASSWORD_VAR: password} if password else {}
    epochs = tuning.max_epochs(settings, user.training)
    study = tuning.open_study(storage, name, task, settings, epochs)
    study_ref = {
        "storage": public_url,
        "study": name,
        "heartbeat_s": settings.heartbeat_s,
        "pruner": settings.pruner,
        "max_epochs": epochs,
    }
    train = trial_runner(context, store, study_ref, user, dataset, horovod, secrets)
    tuning.run_study(
        study, storage, settings.heartbeat_s, settings.space, settings.trials,
        settings.timeout_s, train, context.log.info,
    )  # fmt: skip
    return report(context, store, study, settings, dataset["version"], task)


def trials_table(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """The trials as the UI's table shows them: values to 5 digits, the error's end."""
    return pl.DataFrame(
        [
            {
                "trial": r["trial"],
                "state": r["state"],
                "value": "" if r["value"] is None else f"{r['value']:.5g}",
                "epochs": r["epochs"],
                "parameters": ", ".join(f"{k}={json.dumps(v)}" for k, v in r["params"].items()),
                "error": r["error"][-120:],
            }
            for r in rows
        ]
    )


def report(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    study: "optuna.Study",
    settings: TuningSettings,
    version: str,
    task: "Task",
) -> dg.MaterializeResult:
    from lepton_core import tuning
    from lepton_core.plots import study_png

    name, metric = study.study_name, task.metric
    rows = tuning.trial_rows(study, settings.space)
    best = tuning.best(study)
    if best is None:
        errors = "; ".join(f"trial {r['trial']}: {r['error']}" for r in rows if r["error"])
        raise dg.Failure(description=f"no trial of study {name} completed. {errors}")
    value = {
        "study": name,
        "dataset_version": version,
        "trial": best.number,
        "metric": metric,
        "value": best.value,
        "params": tuning.params_of(best, settings.space),
    }
    store.write_bytes(f"tuning/{name}/study.png", study_png(rows, metric, task.higher_is_better))
    store.write_json(f"tuning/{name}/best.json", value)
    publish(store, context, "tuned_config", value)
    states = [r["state"] for r in rows]
    return dg.MaterializeResult(
        metadata={
            "study": name,
            "best_trial": best.number,
            metric: best.value,
            "best_params": dg.MetadataValue.json(value["params"]),
            "trials": dg.MetadataValue.md(markdown_table(trials_table(rows))),
            **{f"{s.lower()}_trials": states.count(s) for s in ("COMPLETE", "PRUNED", "FAIL")},
            "epochs_run": sum(r["epochs"] for r in rows),
            "study_plot": dg.MetadataValue.path(store.url(f"tuning/{name}/study.png")),
        }
    )

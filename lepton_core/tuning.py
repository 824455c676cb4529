"""Hyperparameter search: an Optuna study whose trials are real training jobs.

The study lives in a relational database (the Dagster instance's: PostgreSQL, or SQLite for
the embedded default), so trials run from several machines share it and a study survives the
process that drove it. ``run_study`` asks for a trial, hands its parameters to ``train`` (a
Horovod job launched by the caller) and tells the study how it ended: the validation metric,
pruned, or failed. While a trial runs its driver beats a heartbeat; a trial whose driver died
is marked failed before any driver starts another trial, once two beats were missed. Trials
finished or running count against the budget, so a rerun goes on where the last one stopped
and drivers on two machines share one budget.

Inside the job, rank 0 reports the metric after every epoch (``EpochReporter``) and the pruner
(Hyperband's successive halving, or the median rule) says whether to stop the trial there.
"""

import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from lepton_core.spec import (
    TUNABLE,
    ModelRef,
    SearchParam,
    TrainingSettings,
    TuningSettings,
    kwarg_name,
)
from lepton_core.tasks import Task

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
PG_SCHEMA = "optuna"


class TrialPruned(Exception):
    """The job stopped a trial early because the pruner said so."""


class TrialFailed(Exception):
    """The trial's job failed (its model did not build, a rank crashed): the study records
    the trial as failed, with this message, and goes on."""


@contextmanager
def quiet() -> Iterator[None]:
    """Optuna warns that heartbeats are experimental and meant for ``Study.optimize``; this
    driver beats for its trials itself (``heartbeat``), which is what the warning is about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
        yield


PASSWORD_VAR = "LEPTON_STUDY_PASSWORD"


def without_password(url: str) -> tuple[str, str | None]:
    """(the database URL without its password, the password): what a job file may hold, and
    what goes to the job's processes in the environment (``PASSWORD_VAR``) instead."""
    parsed = sqlalchemy.engine.make_url(url)
    bare = sqlalchemy.engine.URL.create(
        parsed.drivername, parsed.username, None, parsed.host, parsed.port, parsed.database,
        parsed.query,
    )  # fmt: skip
    return bare.render_as_string(hide_password=False), parsed.password


def storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study database; a running trial missing two heartbeats counts as dead.

    In PostgreSQL the study's tables live in a schema of their own, ``optuna``: the Dagster
    instance's database already has an ``alembic_version`` table (Dagster's), which Optuna
    would read as its own schema version and refuse."""
    engine_kwargs: dict[str, Any] = {}
    parsed, password = sqlalchemy.engine.make_url(url), os.environ.get(PASSWORD_VAR)
    if password and parsed.password is None:
        url = parsed.set(password=password).render_as_string(hide_password=False)
    if url.startswith("postgresql"):
        engine = sqlalchemy.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
        engine.dispose()
        engine_kwargs = {"connect_args": {"options": f"-csearch_path={PG_SCHEMA}"}}
    with quiet():
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=2 * heartbeat_s,
        )


def pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_study(
    storage: optuna.storages.RDBStorage,
    name: str,
    task: Task,
    settings: TuningSettings,
    epochs: int,
) -> optuna.Study:
    """The study ``name`` (made on first use, with its ``enqueue`` configurations first);
    ``epochs``: the most a trial may run."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        direction="maximize" if task.higher_is_better else "minimize",
        pruner=pruner(settings.pruner, epochs),
        sampler=optuna.samplers.TPESampler(seed=0),
        load_if_exists=True,
    )
    if not study.get_trials(deepcopy=False):
        for params in settings.enqueue:
            study.enqueue_trial({k: to_optuna(settings.space[k], v) for k, v in params.items()})
    return study


def max_epochs(settings: TuningSettings, base: TrainingSettings) -> int:
    """The most epochs a trial may run (Hyperband's largest budget): the space's, else the
    project's."""
    epochs = settings.space.get("epochs")
    if epochs is None:
        return base.epochs
    return int(max(epochs.choices) if epochs.choices else epochs.high or 1)


def check_space(space: dict[str, SearchParam], base: TrainingSettings) -> list[str]:
    """What is wrong with the space's training values (each end of a range, every choice),
    each as ``name: reason (got value)``; factory kwargs are checked when the model is built."""
    problems = []
    for name, param in space.items():
        if name not in TUNABLE:
            continue
        values = param.choices if param.choices is not None else [param.low, param.high]
        for value in values:
            try:
                TrainingSettings.model_validate({**base.model_dump(), name: value})
            except ValidationError as exc:
                problems += [f"{name}: {e['msg']} (got {value!r})" for e in exc.errors()]
    return problems


def as_text(param: SearchParam) -> bool:
    """Whether the choices go to Optuna as JSON text: it takes only scalar choices."""
    choices = param.choices or []
    return not all(isinstance(c, str | int | float | bool) or c is None for c in choices)


def to_optuna(param: SearchParam, value: Any) -> Any:
    """A value as Optuna holds it (a list of widths as its JSON text)."""
    return json.dumps(value) if as_text(param) else value


def from_optuna(param: SearchParam, value: Any) -> Any:
    """A value Optuna holds, as the user wrote it."""
    return json.loads(str(value)) if as_text(param) else value


def suggest(
    trial: optuna.Trial | optuna.trial.FixedTrial, space: dict[str, SearchParam]
) -> dict[str, Any]:
    """The trial's value of each parameter. Choices that are not scalars (a list of widths)
    are offered to Optuna as their JSON text and read back."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p.choices is not None:
            value = trial.suggest_categorical(name, [to_optuna(p, c) for c in p.choices])
            params[name] = from_optuna(p, value)
        elif p.integer:
            assert isinstance(p.low, int) and isinstance(p.high, int)
            params[name] = trial.suggest_int(name, p.low, p.high, step=int(p.step or 1), log=p.log)
        else:
            assert p.low is not None and p.high is not None
            params[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return params


def apply(
    params: dict[str, Any], settings: TrainingSettings, model: ModelRef
) -> tuple[TrainingSettings, ModelRef]:
    """``settings`` and ``model`` with a configuration's values in place."""
    knobs = {k: v for k, v in params.items() if k in TUNABLE}
    kwargs = {kwarg_name(k): v for k, v in params.items() if kwarg_name(k)}
    tuned = TrainingSettings.model_validate({**settings.model_dump(), **knobs})
    return tuned, ModelRef(factory=model.factory, kwargs={**model.kwargs, **kwargs})


@contextmanager
def heartbeat(storage: optuna.storages.RDBStorage, trial_id: int, every_s: int) -> Iterator[None]:
    """Beat for ``trial_id`` while the block runs."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial_id)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{trial_id}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def started(study: optuna.Study) -> list[FrozenTrial]:
    """The trials that count against the budget: finished ones, and those running now (on
    this or another machine); a trial whose driver died is failed first."""
    with quiet():
        optuna.storages.fail_stale_trials(study)
    return study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))


def run_study(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    heartbeat_s: int,
    space: dict[str, SearchParam],
    budget: int,
    timeout_s: float,
    train: Callable[[optuna.Trial, dict[str, Any]], float],
    log: Callable[[str], None],
) -> None:
    """Trials until ``budget`` have started (over every run of the study, on every machine)
    or ``timeout_s`` has passed. ``train`` returns the trial's metric, or raises
    ``TrialPruned``, or ``TrialFailed`` (recorded with its message; the study goes on). Any
    other error (the run was canceled) ends the study here; its trial, left running without
    a heartbeat, is failed by the next run."""
    deadline = time.monotonic() + timeout_s
    while len(started(study)) < budget and time.monotonic() < deadline:
        with quiet():
            trial = study.ask()
        params = suggest(trial, space)
        log(f"trial {trial.number}: {params}")
        with heartbeat(storage, trial._trial_id, heartbeat_s):
            try:
                value = train(trial, params)
            except TrialPruned:
                study.tell(trial, state=TrialState.PRUNED)
                log(f"trial {trial.number}: pruned")
                continue
            except TrialFailed as exc:
                trial.set_user_attr("error", str(exc)[-2000:])
                study.tell(trial, state=TrialState.FAIL)
                log(f"trial {trial.number}: failed: {str(exc)[-500:]}")
                continue
        study.tell(trial, value)
        log(f"trial {trial.number}: {value}")


def best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return study.best_trial if complete else None


def params_of(trial: FrozenTrial, space: dict[str, SearchParam]) -> dict[str, Any]:
    """A finished trial's parameters as the user wrote them (JSON choices read back)."""
    return {k: from_optuna(space[k], v) if k in space else v for k, v in trial.params.items()}


def trial_rows(study: optuna.Study, space: dict[str, SearchParam]) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, epochs reported, parameters, error."""
    return [
        {
            "trial": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "params": params_of(t, space),
            "error": t.user_attrs.get("error", ""),
        }
        for t in study.get_trials(deepcopy=False)
    ]


class EpochReporter:
    """Rank 0's link to its trial: ``report`` the epoch's metric; True means stop (pruned)."""

    def __init__(self, ref: dict[str, Any]) -> None:
        study = optuna.load_study(
            study_name=ref["study"],
            storage=storage(ref["storage"], ref["heartbeat_s"]),
            pruner=pruner(ref["pruner"], ref["max_epochs"]),
        )
        self.trial = optuna.Trial(study, ref["trial_id"])

    def report(self, epoch: int, value: float) -> bool:
        self.trial.report(value, epoch)
        return self.trial.should_prune()

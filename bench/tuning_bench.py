"""Tuning and distillation, measured side by side in one run.

    .venv/bin/python bench/tuning_bench.py [--trials 16] [--seeds 3]

Two datasets: the digits demo (the built-in cnn) and the churn example (its own factory,
``examples/tabular_churn``: 4 days of 1,000 customers, 5 % of labels flipped). Every training
below is the Horovod worker's (``train_worker.train``) in this one process (np=1), so trials
cost epochs, not launches.

1. Tuning: an Optuna study (TPE, seeded) over learning rate and batch size (and the churn
   factory's ``hidden``) with Hyperband pruning, trials of at most 15 epochs (the resource
   Hyperband allots, so not searched; early stopping as the project sets it): the pruned
   study of seed 0 below. Its budget is the epochs all its trials ran ("trial-epochs"). The
   default configuration gets the same budget as its most epochs (early stopping as the
   project sets it); the best configuration is trained again as ``trained_model`` would.
   Printed: test accuracy of each.
2. Pruning, over ``--seeds`` training seeds: the study without pruning runs ``--trials``
   trials; then the study with Hyperband (the same sampler seed, so the same first
   configurations) runs a trial at a time until its best reaches the unpruned study's best
   validation score, or it has spent as many trial-epochs as the unpruned study did in all.
   Printed per seed: the trial-epochs each study spent until its best-so-far first reached
   that score, their ratio, and each study's trials and total; and the median ratio (goal:
   at most half; a seed whose pruned study never reached it counts as infinite).
3. Distillation, over ``--seeds`` seeds: the teacher (the default configuration), the
   student alone (the default student: the teacher's network at a quarter of its widths,
   trained on the labels only), and the distilled student (the same network taught by the
   teacher, Hinton's loss with T = 4, weight 0.7), each for the same epochs. Printed:
   parameters, gzipped size, latency at batch 1 and 256, test accuracy (mean and each seed);
   goals: distilled at least +0.5 point over the student alone, and at least 95 % of the
   teacher's accuracy at no more than 25 % of its parameters.
"""

import argparse
import copy
import itertools
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from statistics import fmean, median
from typing import Any

import horovod.torch as hvd
import optuna

from lepton_assets.demo import digits_frame
from lepton_core import tuning
from lepton_core.compress import measure, metric, parameter_count
from lepton_core.data import build_dataset, load_tensors, read_dataset_info, target_scaling
from lepton_core.distill import student_job
from lepton_core.models import load_model, model_description
from lepton_core.spec import (
    DIGITS_PROJECT,
    CompressionSettings,
    Project,
    TrainingSettings,
    TuningSettings,
    worker_job,
)
from lepton_core.store import ArtifactStore
from lepton_core.tasks import task_of
from lepton_core.train_worker import train

ROOT = Path(__file__).resolve().parents[1]
SPACE = {
    "learning_rate": {"low": 3e-4, "high": 3e-2, "log": True},
    "batch_size": {"choices": [16, 32, 64, 128]},
}
EPOCHS = 15  # every trial's most epochs: Hyperband's resource, so not searched


def churn() -> tuple[Project, list]:
    import sys

    sys.path.insert(0, str(ROOT / "examples" / "tabular_churn"))
    from make_data import customers  # pyright: ignore[reportMissingImports]

    project = Project.from_yaml(ROOT / "examples" / "tabular_churn" / "lepton.yaml")
    return project, [customers(1000, seed=i) for i in range(4)]


def dataset(store: ArtifactStore, project: Project, days: list) -> dict[str, Any]:
    manifests = []
    for i, frame in enumerate(days):
        day = f"2026-01-0{i + 1}"
        manifests.append(
            {"partition": day, "sha256": store.write_parquet(f"validated/{day}.parquet", frame)}
        )
    version, _ = build_dataset(store, project.dataset, manifests)
    return read_dataset_info(store, version)


class Runs:
    """Training jobs of one dataset through the worker, each under a fresh prefix."""

    def __init__(self, store: ArtifactStore, project: Project, info: dict[str, Any]) -> None:
        self.store, self.project, self.info = store, project, info
        self.numbers = itertools.count(1)  # shared by copies: every run its own prefix
        self.task = task_of(project.dataset.task)
        self.test = load_tensors(store, info["version"], "test")
        self.unit = target_scaling(info["preprocessing"])[1]

    def with_project(self, project: Project) -> "Runs":
        """The same dataset and store, another project (its training settings, say)."""
        runs = copy.copy(self)
        runs.project = project
        return runs

    def job(self, project: Project, settings: TrainingSettings, **extra: Any) -> dict[str, Any]:
        prefix = f"bench/{project.dataset.name}/run{next(self.numbers)}"
        return worker_job(settings, model_description(project, self.info), prefix, **extra)

    def train(self, job: dict[str, Any]) -> str:
        train(self.store, job, None)
        return job["output_prefix"]

    def test_metric(self, prefix: str) -> float:
        model, _ = load_model(self.store, prefix)
        return metric(model, *self.test, self.task, self.unit)


def study(
    runs: Runs, url: str, name: str, space: dict, pruner: str
) -> tuple[optuna.Study, Callable[[int], None]]:
    """The study ``name`` and a function running it up to a number of trials."""
    settings = TuningSettings.model_validate({"space": space, "pruner": pruner})
    storage = tuning.storage(url, 60)
    epochs = tuning.max_epochs(settings, runs.project.training)
    found = tuning.open_study(storage, name, runs.task, settings, epochs)
    ref = {"storage": url, "study": name, "heartbeat_s": 60, "pruner": pruner, "max_epochs": epochs}

    def trial_run(trial: optuna.Trial, params: dict[str, Any]) -> float:
        training, model = tuning.apply(params, runs.project.training, runs.project.model_ref)
        project = runs.project.model_copy(update={"model": model})
        job = runs.job(project, training, trial={**ref, "trial_id": trial._trial_id})
        outcome = runs.store.read_json(f"{runs.train(job)}/trial.json")
        if outcome["pruned"]:
            raise tuning.TrialPruned()
        return outcome["value"]

    def run(trials: int) -> None:
        tuning.run_study(
            found, storage, 60, settings.space, trials, 3600, trial_run, lambda _: None
        )

    return found, run


def trial_epochs(found: optuna.Study) -> int:
    return sum(len(t.intermediate_values) for t in found.get_trials())


def epochs_to_reach(found: optuna.Study, target: float, higher: bool) -> int | None:
    """Trial-epochs spent until the best-so-far first reached ``target``."""
    spent = 0
    for t in found.get_trials():
        spent += len(t.intermediate_values)
        if t.value is not None and (t.value >= target if higher else t.value <= target):
            return spent
    return None


def pruning(
    runs: Runs, url: str, space: dict, trials: int, seed: int
) -> tuple[dict[str, Any], optuna.Study]:
    """The unpruned study's ``trials`` trials, then the pruned study (the same sampler seed,
    so the same first configurations) a trial at a time until its best reaches the unpruned
    study's best validation score, or it has spent as many trial-epochs as the unpruned study
    did in all. Training seed ``seed`` for both."""
    training = runs.project.training.model_copy(update={"seed": seed})
    runs = runs.with_project(runs.project.model_copy(update={"training": training}))
    name, higher = f"{runs.project.dataset.name}-seed{seed}", runs.task.higher_is_better
    plain, run_plain = study(runs, url, f"{name}-none", space, "none")
    run_plain(trials)
    target, total = plain.best_value, trial_epochs(plain)
    pruned, run_pruned = study(runs, url, f"{name}-hyperband", space, "hyperband")
    while epochs_to_reach(pruned, target, higher) is None and trial_epochs(pruned) < total:
        run_pruned(len(pruned.get_trials()) + 1)  # one trial more
    unpruned = epochs_to_reach(plain, target, higher)
    assert unpruned is not None  # a study reaches its own best
    spent = {"pruned": epochs_to_reach(pruned, target, higher), "unpruned": unpruned}
    summary = {
        "seed": seed,
        "best_val_unpruned": target,
        "best_val_pruned": pruned.best_value,
        "trials_unpruned": len(plain.get_trials()),
        "trials_pruned": len(pruned.get_trials()),
        "epochs_total_unpruned": total,
        "epochs_total_pruned": trial_epochs(pruned),
        "epochs_to_unpruned_best": spent,
        "ratio": None if spent["pruned"] is None else round(spent["pruned"] / unpruned, 3),
    }
    return summary, pruned


def tune(runs: Runs, url: str, space: dict, trials: int, seeds: int) -> dict[str, Any]:
    outcomes = [pruning(runs, url, space, trials, seed) for seed in range(seeds)]
    studies, pruned = [summary for summary, _ in outcomes], outcomes[0][1]
    ratios = [s["ratio"] if s["ratio"] is not None else float("inf") for s in studies]
    budget = trial_epochs(pruned)
    default = runs.project.training
    default_prefix = runs.train(
        runs.job(runs.project, default.model_copy(update={"epochs": budget}))
    )
    best = tuning.params_of(pruned.best_trial, pruned_space(space))
    training, model = tuning.apply(best, default, runs.project.model_ref)
    tuned_prefix = runs.train(runs.job(runs.project.model_copy(update={"model": model}), training))
    return {
        "budget_trial_epochs": budget,
        "default_test": round(runs.test_metric(default_prefix), 4),
        "tuned_test": round(runs.test_metric(tuned_prefix), 4),
        "tuned_params": best,
        "pruning": studies,
        "median_ratio_to_unpruned_best": median(ratios),
    }


def pruned_space(space: dict) -> dict:
    return TuningSettings.model_validate({"space": space}).space


def distill(runs: Runs, seeds: int, epochs: int) -> dict[str, Any]:
    rows: dict[str, list[dict[str, Any]]] = {"teacher": [], "student_alone": [], "distilled": []}
    base = runs.project.training.model_copy(update={"epochs": epochs, "patience": 0})
    for seed in range(seeds):
        settings = base.model_copy(update={"seed": seed})
        teacher = runs.train(runs.job(runs.project, settings))
        compression = CompressionSettings(distill_epochs=epochs)
        taught = student_job(runs.store, teacher, compression, settings, f"{teacher}-distilled")
        alone = {**taught, "output_prefix": f"{teacher}-alone",
                 "checkpoint_prefix": f"{teacher}-alone/checkpoints", "distill": None}  # fmt: skip
        for name, prefix in (
            ("teacher", teacher),
            ("distilled", runs.train(taught)),
            ("student_alone", runs.train(alone)),
        ):
            model, _ = load_model(runs.store, prefix)
            measured = measure(model, *runs.test, runs.task, runs.unit)
            rows[name].append({**measured, "parameters": parameter_count(model)})
    metric_name = runs.task.metric
    test = metric_name.replace("val_", "test_")
    summary = {}
    for name, per_seed in rows.items():
        summary[name] = {
            test: round(fmean(r[metric_name] for r in per_seed), 4),
            "per_seed": [r[metric_name] for r in per_seed],
            "parameters": per_seed[0]["parameters"],
            "size_gzip_bytes": per_seed[0]["size_gzip_bytes"],
            "latency_b1_p50_ms": per_seed[0]["latency_b1_p50_ms"],
            "throughput_b256_per_s": per_seed[0]["throughput_b256_per_s"],
        }
    t, a, d = (summary[k][test] for k in ("teacher", "student_alone", "distilled"))
    summary["distilled_minus_alone_points"] = round(100 * (d - a), 2)
    summary["distilled_share_of_teacher"] = round(d / t, 4)
    summary["student_parameter_share"] = round(
        summary["distilled"]["parameters"] / summary["teacher"]["parameters"], 4
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--distill-epochs", type=int, default=8)
    args = parser.parse_args()
    hvd.init()
    churn_project, churn_days = churn()
    datasets = {
        "digits": (DIGITS_PROJECT, [digits_frame()], SPACE),
        "churn": (
            churn_project,
            churn_days,
            {**SPACE, "kwargs.hidden": {"choices": [16, 64, 256]}},
        ),
    }
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/optuna.db"
        for name, (project, days, space) in datasets.items():
            project = project.model_copy(
                update={"training": project.training.model_copy(update={"epochs": EPOCHS})}
            )
            store = ArtifactStore(f"file://{tmp}/{name}")
            runs = Runs(store, project, dataset(store, project, days))
            report[name] = {
                "tuning": tune(runs, url, space, args.trials, args.seeds),
                "distillation": distill(runs, args.seeds, args.distill_epochs),
            }
            print(name, json.dumps(report[name], indent=1), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

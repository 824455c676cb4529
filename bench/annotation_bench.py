"""Annotation candidates against label noise put in on purpose, measured in one run.

    .venv/bin/python bench/annotation_bench.py [--seeds 3]

The churn example (``examples/tabular_churn``: 4 days of 1,000 customers; the generator
itself flips 5 % of labels, noise nobody knows the rows of) with 5 % of the *training*
split's labels flipped again on purpose, rows known. Per day, ``annotation_candidates``'
core (``lepton_core.annotation.candidates``: cleanlab on 5-fold probabilities of a quick
model) ranks the day's rows; a reviewer then looks at the top-scored 10 % of all training
rows (the review budget) and, as an annotator would, restores the label of every reviewed
row that was flipped on purpose (the generator's own noise stays: the reviewer cannot tell
it from the truth here).

Printed: precision (flipped rows among the reviewed) and recall (flipped rows reviewed,
of all flipped) at that budget; the test accuracy of the churn model (its own factory,
trained by the Horovod worker in this process, ``--seeds`` seeds) on the flipped labels,
on the corrected ones, and on the labels before flipping (the ceiling).
"""

import argparse
import json
import tempfile
from statistics import fmean

import horovod.torch as hvd
import numpy as np
import polars as pl
from tuning_bench import Runs, churn, dataset  # pyright: ignore[reportMissingImports]

from lepton_core.annotation import candidates
from lepton_core.data import SPLIT_COLUMN, assign_splits
from lepton_core.spec import Project
from lepton_core.store import ArtifactStore

FLIP_SHARE = 0.05
BUDGET = 0.10


def flip(days: list[pl.DataFrame], project: Project) -> tuple[list[pl.DataFrame], set[str]]:
    """5 % of each day's training rows with the other label; (days, the flipped ids)."""
    spec = project.dataset
    rng = np.random.default_rng(0)
    flipped, out = set(), []
    for frame in days:
        train = assign_splits(frame, spec.id_column)[SPLIT_COLUMN] == "train"
        ids = frame.filter(train)[spec.id_column].to_numpy()
        chosen = set(rng.choice(ids, round(len(ids) * FLIP_SHARE), replace=False).tolist())
        label = pl.col(spec.label_column)
        other = pl.when(label == "yes").then(pl.lit("no")).otherwise(pl.lit("yes"))
        out.append(
            frame.with_columns(
                pl.when(pl.col(spec.id_column).is_in(list(chosen)))
                .then(other)
                .otherwise(pl.col(spec.label_column))
                .alias(spec.label_column)
            )
        )
        flipped |= chosen
    return out, flipped


def review(days: list[pl.DataFrame], project: Project, flipped: set[str]) -> tuple[dict, set]:
    """Rank every day's rows, review the top 10 % of training rows; (figures, ids caught)."""
    spec = project.dataset
    ranked = []
    for frame in days:
        found, _ = candidates(spec, frame, frame.clear(), None)
        ranked.append(found.select(spec.id_column, "score"))
    train_ids = {
        i
        for frame in days
        for i in assign_splits(frame, spec.id_column)
        .filter(pl.col(SPLIT_COLUMN) == "train")[spec.id_column]
        .to_list()
    }
    pool = pl.concat(ranked).filter(pl.col(spec.id_column).is_in(list(train_ids)))
    budget = round(len(train_ids) * BUDGET)
    reviewed = set(pool.sort("score", descending=True).head(budget)[spec.id_column].to_list())
    caught = reviewed & flipped
    return {
        "training_rows": len(train_ids),
        "flipped_on_purpose": len(flipped),
        "flagged": pool.height,
        "budget_rows": budget,
        "reviewed": len(reviewed),
        "precision": round(len(caught) / len(reviewed), 4) if reviewed else None,
        "recall": round(len(caught) / len(flipped), 4),
    }, caught


def corrected(noisy: list, original: list, caught: set, project: Project) -> list:
    """The flipped days with the caught rows' labels restored (what the annotator lands)."""
    spec = project.dataset
    return [
        n.with_columns(
            pl.when(pl.col(spec.id_column).is_in(list(caught)))
            .then(o[spec.label_column])
            .otherwise(pl.col(spec.label_column))
            .alias(spec.label_column)
        )
        for n, o in zip(noisy, original, strict=True)
    ]


def accuracy(store: ArtifactStore, project: Project, days: list, seeds: int) -> dict:
    runs = Runs(store, project, dataset(store, project, days))
    scores = []
    for seed in range(seeds):
        settings = project.training.model_copy(update={"seed": seed})
        scores.append(round(runs.test_metric(runs.train(runs.job(project, settings))), 4))
    return {"test_accuracy": round(fmean(scores), 4), "per_seed": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    hvd.init()
    project, days = churn()
    noisy, flipped = flip(days, project)
    figures, caught = review(noisy, project, flipped)
    print("review", json.dumps(figures), flush=True)
    report: dict = {"review": figures}
    # Test rows keep their labels in every variant: only training labels were flipped.
    variants = {
        "flipped": noisy,
        "corrected": corrected(noisy, days, caught, project),
        "before_flipping": days,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, frames in variants.items():
            store = ArtifactStore(f"file://{tmp}/{name}")
            report[name] = accuracy(store, project, frames, args.seeds)
            print(name, json.dumps(report[name]), flush=True)
    report["corrected_minus_flipped_points"] = round(
        100 * (report["corrected"]["test_accuracy"] - report["flipped"]["test_accuracy"]), 2
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

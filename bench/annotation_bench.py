"""Annotation candidates against label noise put in on purpose, measured in one run.

    .venv/bin/python bench/annotation_bench.py [--seeds 3]

The churn example (``examples/tabular_churn``: 4 days of 1,000 customers; the generator
itself flips 5 % of labels, noise nobody knows the rows of) with 5 % of the *training*
split's labels flipped again on purpose, rows known. Per day, ``annotation_candidates``'
core (``lepton_core.annotation.candidates``: cleanlab on 5-fold probabilities of a quick
model) ranks the day's rows; a reviewer then looks at the top-scored 10 % of all training
rows (the review budget) and, as an annotator would, restores the label of every reviewed
row that was flipped on purpose (the generator's own noise stays: the reviewer cannot tell
it from the truth here). The corrections go back as an annotation batch, a day of their
own after the four, through the dataset build's superseding (as `annotation_sensor`'s files
do once ingested and validated).

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
from lepton_core.data import SPLIT_COLUMN, assign_splits, build_dataset, read_dataset_info
from lepton_core.rows import PROVENANCE
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


def annotation_batch(original: list, caught: set, project: Project) -> pl.DataFrame:
    """What the annotator lands: each caught row with its label restored, with provenance."""
    spec = project.dataset
    rows = pl.concat([o.filter(pl.col(spec.id_column).is_in(list(caught))) for o in original])
    return rows.with_columns(
        pl.int_range(1, pl.len() + 1).cast(pl.String).alias(PROVENANCE[0]),
        pl.lit("bench").alias(PROVENANCE[1]),
        pl.lit("2026-01-05T00:00:00Z").alias(PROVENANCE[2]),
        pl.lit("likely_mislabeled").alias(PROVENANCE[3]),
    )


def with_batch(store: ArtifactStore, project: Project, days: list, batch: pl.DataFrame) -> dict:
    """The noisy days and, as the next day, the annotation batch: the dataset build lets
    its rows supersede the flipped ones (``data.annotations_in_force``)."""
    manifests = []
    for i, frame in enumerate([*days, batch]):
        day = f"2026-01-0{i + 1}"
        digest = store.write_parquet(f"validated/{day}.parquet", frame)
        annotated = frame.height if frame is batch else 0
        manifests.append({"partition": day, "sha256": digest, "annotated_rows": annotated})
    version, info = build_dataset(store, project.dataset, manifests)
    return read_dataset_info(store, version)


def accuracy(store: ArtifactStore, project: Project, info: dict, seeds: int) -> dict:
    runs = Runs(store, project, info)
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
    batch = annotation_batch(days, caught, project)
    builds = {
        "flipped": lambda store: dataset(store, project, noisy),
        "corrected": lambda store: with_batch(store, project, noisy, batch),
        "before_flipping": lambda store: dataset(store, project, days),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, build in builds.items():
            store = ArtifactStore(f"file://{tmp}/{name}")
            info = build(store)
            report[name] = accuracy(store, project, info, args.seeds)
            report[name]["annotations"] = info.get("annotations")
            print(name, json.dumps(report[name]), flush=True)
    report["corrected_minus_flipped_points"] = round(
        100 * (report["corrected"]["test_accuracy"] - report["flipped"]["test_accuracy"]), 2
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

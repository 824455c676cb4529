"""Batch-level checks of a validated day: ids seen in other days, and drift.

Drift is measured with the population stability index (PSI) against the current training
dataset's train split: per feature over the reference's deciles, and over the label classes.
PSI below 0.1 is usually read as stable, above 0.25 as a real shift.
"""

from typing import Any

import numpy as np
import polars as pl

from lepton_assets.dataset_spec import DatasetSpec
from resources.artifact_store import ArtifactStore

EPSILON = 1e-4  # floor on a bin's share, so an empty bin does not make PSI infinite


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of ``current`` against ``reference`` over the reference's decile bins."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, 11)))
    if len(edges) < 2:  # a constant reference: one bin for its value, one for the rest
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    bins = np.concatenate([[-np.inf], edges[1:-1], [np.inf]])
    expected = np.histogram(reference, bins)[0] / len(reference)
    actual = np.histogram(current, bins)[0] / len(current)
    return category_psi(expected, actual)


def category_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    p, q = np.maximum(actual, EPSILON), np.maximum(expected, EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def drift(spec: DatasetSpec, reference: pl.DataFrame, batch: pl.DataFrame) -> dict[str, Any]:
    """Label PSI and each feature's PSI of ``batch`` against ``reference``."""
    classes = spec.classes

    def shares(frame: pl.DataFrame) -> np.ndarray:
        counts = frame[spec.label_column].value_counts()
        by_class = dict(counts.iter_rows())
        return np.array([by_class.get(c, 0) for c in classes]) / max(frame.height, 1)

    features = {
        c: round(psi(reference[c].to_numpy(), batch[c].to_numpy()), 4) for c in spec.feature_columns
    }
    return {
        "label_psi": round(category_psi(shares(reference), shares(batch)), 4),
        "feature_psi": features,
    }


def drift_verdict(spec: DatasetSpec, measured: dict[str, Any]) -> list[str]:
    """The drift thresholds the batch crosses; empty means stable."""
    broken = []
    if spec.label_psi_threshold is not None and measured["label_psi"] > spec.label_psi_threshold:
        broken.append(f"label PSI {measured['label_psi']} > {spec.label_psi_threshold}")
    if spec.feature_psi_threshold is not None:
        worst = sorted(measured["feature_psi"].items(), key=lambda kv: -kv[1])
        over = [(c, v) for c, v in worst if v > spec.feature_psi_threshold]
        if over:
            broken.append(
                f"{len(over)} features with PSI > {spec.feature_psi_threshold}, worst "
                + ", ".join(f"{c}={v}" for c, v in over[:5])
            )
    return broken


def ids_in_other_days(
    store: ArtifactStore, spec: DatasetSpec, day: str, ids: pl.Series
) -> list[tuple[str, str]]:
    """(id, day) for each of ``ids`` that another accepted day (all its checks passed)
    already holds. Rejected days do not count: a day refused for repeating another's ids must
    not make that other day fail when it is validated again."""
    found: list[tuple[str, str]] = []
    for key in store.list("validated"):
        other = key.rsplit("/", 1)[-1].removesuffix(".parquet")
        if not key.endswith(".parquet") or other == day:
            continue
        if not store.read_json(f"validated/{other}.json")["check_passed"]:
            continue
        theirs = store.read_parquet(key).select(spec.id_column).to_series()
        found += [(i, other) for i in ids.filter(ids.is_in(theirs.implode())).to_list()]
    return sorted(found)


def reference_train_split(store: ArtifactStore) -> pl.DataFrame | None:
    """The current training dataset's train split, the drift reference (None before one)."""
    if not store.exists("current/training_dataset.json"):
        return None
    version = store.read_json("current/training_dataset.json")["version"]
    return store.read_parquet(f"datasets/{version}/train.parquet")

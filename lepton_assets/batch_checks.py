"""Batch-level checks of a validated day: ids seen in other days, and drift.

Drift is measured with the population stability index (PSI) against the current training
dataset's train split: numeric features and a numeric target over the reference's deciles,
classes and categories over their shares (unseen categories as one more share), images by
their brightness.
PSI below 0.1 is usually read as stable, above 0.25 as a real shift.
"""

from typing import Any

import numpy as np
import polars as pl

from lepton_core.data import IMAGE_PIXELS
from lepton_core.keys import current_key, dataset_info_key, split_key
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore

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


def shares(values: pl.Series, categories: list) -> np.ndarray:
    """Each category's share of ``values``, plus one last share for everything else."""
    counts = dict(values.value_counts().iter_rows())
    known = [counts.get(c, 0) for c in categories]
    return np.array([*known, len(values) - sum(known)]) / max(len(values), 1)


def image_brightness(frame: pl.DataFrame) -> np.ndarray:
    """Mean pixel value of each image: the one-number summary whose drift is measured."""
    return np.array([np.frombuffer(b, dtype=np.uint8).mean() for b in frame[IMAGE_PIXELS]])


def drift(
    spec: DatasetSpec, reference: pl.DataFrame, batch: pl.DataFrame, vocab: dict[str, list]
) -> dict[str, Any]:
    """PSI of ``batch`` against ``reference``: the target (class shares, or deciles of a
    number), numeric features over their non-null values, categorical features over the
    training vocabulary plus an unknown share, and images by brightness."""
    label = spec.label_column
    if spec.classes is not None:
        label_psi = category_psi(
            shares(reference[label], spec.classes), shares(batch[label], spec.classes)
        )
    else:
        label_psi = psi(reference[label].to_numpy(), batch[label].to_numpy())
    features = {
        c: psi(reference[c].drop_nulls().to_numpy(), batch[c].drop_nulls().to_numpy())
        for c in spec.feature_columns
        if reference[c].null_count() < reference.height and batch[c].null_count() < batch.height
    }
    features |= {
        c: category_psi(shares(reference[c], vocab[c]), shares(batch[c], vocab[c]))
        for c in spec.categorical_columns
    }
    if spec.image is not None:
        features[spec.image.column] = psi(image_brightness(reference), image_brightness(batch))
    return {
        "label_psi": round(label_psi, 4),
        "feature_psi": {c: round(v, 4) for c, v in features.items()},
    }


def unseen_categories(batch: pl.DataFrame, vocab: dict[str, list]) -> dict[str, int]:
    """Per categorical column, how many of the batch's values the training vocabulary lacks
    (they go to the unknown bucket)."""
    return {
        c: int(
            (
                batch[c].is_not_null()
                & ~batch[c].is_in(pl.Series(values, dtype=pl.String).implode())
            ).sum()
        )
        for c, values in vocab.items()
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


def drift_reference(store: ArtifactStore) -> tuple[pl.DataFrame, dict[str, list]] | None:
    """The current training dataset's train split and categorical vocabularies: the drift
    reference (None before a dataset exists)."""
    if not store.exists(current_key("training_dataset")):
        return None
    version = store.read_json(current_key("training_dataset"))["version"]
    vocab = store.read_json(dataset_info_key(version))["preprocessing"]["categorical"]
    return store.read_parquet(split_key(version, "train")), vocab

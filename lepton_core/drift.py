"""Drift of a day against the training data, measured with the population stability index.

The reference is a *summary* of the training dataset's train split, computed once when the
dataset version is built and stored with it (``datasets/<version>/drift_reference.json``):
for a number, the inner edges of its decile bins and the train split's share in each; for
classes and categories, their shares (plus one share for everything else). A new day is then
measured against the summary alone, so its cost does not grow with the training data.

Numeric features and a numeric target are binned over their non-null values; categorical
features over the training vocabulary (unseen values as one more share); images by their
brightness (mean pixel). PSI below 0.1 is usually read as stable, above 0.25 as a real shift.
"""

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from lepton_core.images import IMAGE_PIXELS
from lepton_core.spec import DatasetSpec

DECILES = np.linspace(0, 1, 11)
EPSILON = 1e-4  # floor on a bin's share, so an empty bin does not make PSI infinite


def numeric_summary(reference: np.ndarray) -> dict[str, list[float]]:
    """The reference's decile bins (inner edges) and its share in each."""

    def shares(inner: np.ndarray) -> np.ndarray:
        return np.histogram(reference, bin_edges(inner))[0] / len(reference)

    return binned_summary(np.quantile(reference, DECILES), shares)


def binned_summary(
    deciles: np.ndarray, shares_in: Callable[[np.ndarray], np.ndarray]
) -> dict[str, list[float]]:
    """Bins between the distinct deciles (two around a constant) and ``shares_in(inner
    edges)``, the share in each (a value on an edge counts in the bin above it)."""
    edges = np.unique(deciles)
    if len(edges) < 2:  # a constant reference
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    inner = edges[1:-1]
    return {"bins": inner.tolist(), "shares": np.asarray(shares_in(inner)).tolist()}


def bin_edges(inner: Any) -> np.ndarray:
    return np.concatenate([[-np.inf], np.asarray(inner, dtype=float), [np.inf]])


def numeric_psi(summary: dict[str, list[float]], current: np.ndarray) -> float:
    actual = np.histogram(current, bin_edges(summary["bins"]))[0] / len(current)
    return category_psi(np.asarray(summary["shares"]), actual)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of ``current`` against ``reference`` over the reference's decile bins."""
    return numeric_psi(numeric_summary(reference), current)


def category_psi(expected: np.ndarray, actual: np.ndarray) -> float:
    p, q = np.maximum(actual, EPSILON), np.maximum(expected, EPSILON)
    return float(np.sum((p - q) * np.log(p / q)))


def shares(values: pl.Series, categories: list) -> np.ndarray:
    """Each category's share of ``values``, plus one last share for everything else."""
    return np.asarray(category_summary(categories, value_counts(values))["shares"])


def image_brightness(frame: pl.DataFrame) -> np.ndarray:
    """Mean pixel value of each image: the one-number summary whose drift is measured."""
    return np.array([np.frombuffer(b, dtype=np.uint8).mean() for b in frame[IMAGE_PIXELS]])


def measured_values(spec: DatasetSpec, frame: pl.DataFrame) -> dict[str, pl.Series]:
    """What drift is measured on, per name: the target, each feature (numbers without their
    nulls), the image column's brightness."""
    values = {spec.label_column: frame[spec.label_column]}
    values |= {c: frame[c].drop_nulls() for c in spec.feature_columns}
    values |= {c: frame[c] for c in spec.categorical_columns}
    if spec.image is not None:
        values[spec.image.column] = pl.Series(image_brightness(frame))
    return values


def categories_of(spec: DatasetSpec, vocab: dict[str, list], name: str) -> list | None:
    """The categories a name is measured over, or None for a number."""
    if name == spec.label_column:
        return list(spec.classes) if spec.classes is not None else None
    return vocab.get(name)


def category_summary(categories: list, counts: dict[Any, int]) -> dict[str, Any]:
    """Shares of ``categories`` from value counts (null under None), plus everything else."""
    total = sum(counts.values())
    known = [counts.get(c, 0) for c in categories]
    shares = np.array([*known, total - sum(known)]) / max(total, 1)
    return {"categories": categories, "shares": shares.tolist()}


def value_counts(values: pl.Series) -> dict[Any, int]:
    return dict(values.value_counts().iter_rows())


def reference_summary(
    spec: DatasetSpec, train: pl.DataFrame, vocab: dict[str, list]
) -> dict[str, Any]:
    """The drift reference of a training dataset; a feature with no value in the train
    split has none (null)."""
    summary: dict[str, Any] = {}
    for name, values in measured_values(spec, train).items():
        categories = categories_of(spec, vocab, name)
        if categories is not None:
            summary[name] = category_summary(categories, value_counts(values))
        else:
            summary[name] = numeric_summary(values.to_numpy()) if len(values) else None
    return summary


def drift(spec: DatasetSpec, summary: dict[str, Any], batch: pl.DataFrame) -> dict[str, Any]:
    """PSI of ``batch`` against a reference summary: the target and every feature that has
    values on both sides."""
    measured: dict[str, float] = {}
    for name, values in measured_values(spec, batch).items():
        reference = summary.get(name)
        if reference is None or len(values) == 0:
            continue
        if "categories" in reference:
            actual = shares(values, reference["categories"])
            measured[name] = category_psi(np.asarray(reference["shares"]), actual)
        else:
            measured[name] = numeric_psi(reference, values.to_numpy())
    label_psi = measured.pop(spec.label_column, 0.0)
    return {
        "label_psi": round(label_psi, 4),
        "feature_psi": {c: round(v, 4) for c, v in measured.items()},
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

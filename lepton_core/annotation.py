"""Annotation candidates: the rows of a day a person should look at, each with its reason and
a score in [0, 1] (higher: look first).

- ``quarantined_label``: rows quarantined for breaking a rule on the label column (score 1);
- ``likely_mislabeled``: accepted rows whose label is likely wrong by confident learning
  (cleanlab's ``find_label_issues``) on out-of-fold class probabilities of a quick
  cross-validated model (scikit-learn's histogram gradient boosting over the numeric and
  categorical features); score 1 − the label's self-confidence. Classification on tabular
  features only: for images the quick model would not be a fair judge, and the reason is
  said;
- ``unsure_served``: served rows (the monitoring sample) the champion was least sure of;
  score 1 − its top class probability.

Each candidate keeps the row's id, features and current label, and the quick model's (or
the champion's) suggestion, so an annotation tool can show them pre-filled.
"""

import hashlib
import json
from typing import Any

import numpy as np
import polars as pl

from lepton_core.rows import FAILED_RULES
from lepton_core.spec import DatasetSpec

FOLDS = 5
REASON, SCORE, SUGGESTION = "reason", "score", "suggestion"
SERVED_SHARE = 0.05  # of the day's served sample: the least sure rows


def feature_matrix(frame: pl.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray, list[bool]]:
    """Numeric features as they are (nulls as NaN, which the model handles), categorical
    ones as codes of their sorted values; (matrix, which columns are categorical)."""
    columns = [frame[c].cast(pl.Float64).to_numpy() for c in spec.feature_columns]
    for c in spec.categorical_columns:
        values = frame[c].cast(pl.String)
        vocabulary = sorted(v for v in values.unique().to_list() if v is not None)
        codes = values.replace_strict(vocabulary, list(range(len(vocabulary))), default=None)
        columns.append(codes.cast(pl.Float64).to_numpy())
    categorical = [False] * len(spec.feature_columns) + [True] * len(spec.categorical_columns)
    return np.column_stack(columns), categorical


def label_issue_rows(frame: pl.DataFrame, spec: DatasetSpec) -> tuple[pl.DataFrame, str]:
    """(the likely mislabeled rows with score and suggestion, why none were looked for)."""
    if spec.task != "classification" or spec.classes is None:
        return frame.clear(), "label errors are looked for in classification only"
    if spec.image is not None or not (spec.feature_columns or spec.categorical_columns):
        return frame.clear(), "label errors are looked for on tabular features only"
    classes = [str(c) for c in spec.classes]
    labels = frame[spec.label_column].cast(pl.String).to_list()
    y = np.array([classes.index(v) for v in labels])
    counts = np.bincount(y, minlength=len(classes))
    if (counts[counts > 0] < FOLDS).any() or (counts > 0).sum() < 2:
        return frame.clear(), f"too few rows per class for {FOLDS}-fold probabilities: {counts}"
    # Imported here: scikit-learn and cleanlab take a second or two, and only this step
    # needs them (not the code server, nor every step that loads the definitions).
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    x, categorical = feature_matrix(frame, spec)
    model = HistGradientBoostingClassifier(
        categorical_features=categorical,  # pyright: ignore[reportArgumentType]  (a bool mask)
        random_state=0,
    )
    folds = StratifiedKFold(FOLDS, shuffle=True, random_state=0)
    seen = np.flatnonzero(counts)  # classes absent from this day get no column
    local = np.searchsorted(seen, y)
    probs = np.asarray(cross_val_predict(model, x, local, cv=folds, method="predict_proba"))
    # n_jobs=1: cleanlab's default forks a process pool, and a fork of a process that runs
    # threads (Dagster's, torch's OpenMP team) can deadlock in the child; one day's rows
    # take well under a second in one process.
    flagged = find_label_issues(local, probs, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(local, probs)
    suggested = [classes[seen[i]] for i in probs.argmax(1)]
    scored = frame.with_columns(
        pl.Series(SCORE, np.round(1.0 - quality, 5)),
        pl.Series(SUGGESTION, suggested, dtype=pl.String),
        pl.lit("likely_mislabeled").alias(REASON),
    )
    return scored.filter(pl.Series(flagged)), ""


def quarantined_label_rows(quarantine: pl.DataFrame, spec: DatasetSpec) -> pl.DataFrame:
    """Quarantined rows that broke a rule on the label column."""
    if quarantine.is_empty():
        return pl.DataFrame()
    on_label = f"({spec.label_column})"
    broke = quarantine[FAILED_RULES].list.eval(pl.element().str.ends_with(on_label)).list.any()
    return quarantine.filter(broke).with_columns(
        pl.lit(1.0).alias(SCORE),
        pl.lit(None, pl.String).alias(SUGGESTION),
        pl.lit("quarantined_label").alias(REASON),
    )


def served_id(row: dict[str, Any]) -> str:
    """An id for a served row (requests carry none): a digest of its features, so the same
    row gets the same id in every run."""
    text = json.dumps(row, sort_keys=True, default=str)
    return "served-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def unsure_served_rows(samples: pl.DataFrame | None, spec: DatasetSpec) -> pl.DataFrame:
    """The least sure share of the served sample (rows with a confidence only), each with an
    id of its own: once annotated it is a new row of the data."""
    if samples is None or "confidence" not in samples.columns or samples.is_empty():
        return pl.DataFrame()
    count = max(1, round(samples.height * SERVED_SHARE))
    unsure = samples.sort("confidence").head(count)
    features = [
        c for c in (*spec.feature_columns, *spec.categorical_columns) if c in unsure.columns
    ]
    ids = [served_id(row) for row in unsure.select(features).iter_rows(named=True)]
    return unsure.with_columns(
        pl.Series(spec.id_column, ids, dtype=pl.String),
        (1.0 - pl.col("confidence")).round(5).alias(SCORE),
        pl.col("prediction").cast(pl.String).alias(SUGGESTION),
        pl.lit("unsure_served").alias(REASON),
    )


def candidates(
    spec: DatasetSpec,
    accepted: pl.DataFrame,
    quarantine: pl.DataFrame,
    served: pl.DataFrame | None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Every candidate of one day, highest score first, and a summary for metadata."""
    mislabeled, skipped = label_issue_rows(accepted, spec)
    parts = [quarantined_label_rows(quarantine, spec), mislabeled, unsure_served_rows(served, spec)]
    keep = [spec.id_column, REASON, SCORE, spec.label_column, SUGGESTION]
    keep += [*spec.feature_columns, *spec.categorical_columns]
    # Labels as text: a quarantined row's label may be a value outside the classes' type.
    frames = [
        p.select([c for c in keep if c in p.columns]).with_columns(
            pl.col(c).cast(pl.String) for c in (spec.id_column, spec.label_column) if c in p.columns
        )
        for p in parts
        if p.height
    ]
    empty = pl.DataFrame(schema={spec.id_column: pl.String, REASON: pl.String, SCORE: pl.Float64})
    found = pl.concat(frames, how="diagonal_relaxed") if frames else empty
    found = found.sort(SCORE, descending=True, maintain_order=True)
    rows = accepted.height + quarantine.height
    reasons = found[REASON].value_counts(sort=True) if found.height else None
    summary = {
        "candidates": found.height,
        "share_flagged": round(found.height / rows, 5) if rows else 0.0,
        "by_reason": dict(reasons.iter_rows()) if reasons is not None else {},
        "label_errors_skipped": skipped,
    }
    return found, summary

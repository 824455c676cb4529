"""Served traffic against what the champion learned from: the loop back into training.

The sampler writes served rows (``serving/samples/<day>/<hour>/``); ``served_drift`` reads a
day of them and measures, with the validation step's own PSI code (``drift.drift``), each
feature against the training reference of the dataset version the champion was trained on,
and the predictions against the training labels (prediction drift: served traffic has no
labels). It also counts the served categorical values the champion's vocabulary lacks. The
verdict uses the spec's drift thresholds, as validation does; the result is written to
``serving/drift/<day>.json``, where the retraining sensor reads it.
"""

from typing import Any

import polars as pl

from lepton_core.drift import drift, drift_verdict, unseen_categories
from lepton_core.keys import drift_reference_key
from lepton_core.registry import require_champion
from lepton_core.serving.sampler import SAMPLES_PREFIX
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore

DRIFT_PREFIX = "serving/drift"


def drift_key(day: str) -> str:
    return f"{DRIFT_PREFIX}/{day}.json"


def served_rows(store: ArtifactStore, day: str) -> pl.DataFrame | None:
    keys = sorted(k for k in store.files(f"{SAMPLES_PREFIX}/{day}") if k.endswith(".parquet"))
    if not keys:
        return None
    return pl.concat([store.read_parquet(k) for k in keys], how="diagonal_relaxed")


def served_drift(store: ArtifactStore, day: str) -> dict[str, Any]:
    """The day's served traffic measured against the champion's training data; written to
    ``serving/drift/<day>.json``."""
    champion = require_champion(store)
    info = store.read_json(f"{champion['model_prefix']}/model.json")
    spec = DatasetSpec.model_validate(info["spec"])
    frame = served_rows(store, day)
    result: dict[str, Any] = {"day": day, "champion": champion["model_prefix"], "rows": 0}
    if frame is not None:
        reference = store.read_json(drift_reference_key(info["dataset_version"]))
        as_labelled = frame.with_columns(pl.col("prediction").alias(spec.label_column))
        measured = drift(spec, reference, as_labelled)
        vocab = info["preprocessing"]["categorical"]
        unseen = unseen_categories(frame, vocab)
        result.update(
            rows=frame.height,
            versions=dict(frame["model_version"].value_counts().iter_rows()),
            prediction_psi=measured["label_psi"],
            feature_psi=measured["feature_psi"],
            unseen_categories=unseen,
            unseen_share=round(sum(unseen.values()) / (frame.height * len(vocab)), 4)
            if vocab
            else 0.0,
            drifted=drift_verdict(spec, measured),
        )
    store.write_json(drift_key(day), result)
    return result

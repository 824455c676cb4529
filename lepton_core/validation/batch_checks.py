"""Batch-level checks of a validated day: ids seen in other days, and the drift reference.

The PSI arithmetic lives in ``lepton_core.drift``; here the checks find their inputs in the
artifact store.
"""

from datetime import UTC, datetime
from typing import Any

import polars as pl

from lepton_core.id_index import IdIndex
from lepton_core.keys import (
    current_key,
    dataset_info_key,
    drift_reference_key,
    validated_key,
)
from lepton_core.rows import NEW_ROW_REASONS, PROVENANCE, annotated
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore


def seed_index(index: IdIndex, store: ArtifactStore, spec: DatasetSpec, day: str) -> None:
    """An index made after days were accepted first loads their ids, once."""
    if not index.is_seeded():
        from lepton_core.data import accepted_partitions  # torch: only to seed a new index

        accepted = [m["partition"] for m in accepted_partitions(store)[0] if m["partition"] != day]
        index.seed(
            ((d, day_ids(store, spec, d)) for d in accepted), at=datetime.now(UTC).isoformat()
        )


def ids_in_other_days(
    index: IdIndex, store: ArtifactStore, spec: DatasetSpec, day: str, ids: pl.Series, accept: bool
) -> list[tuple[str, str]]:
    """(id, day) for each of ``ids`` that another accepted day (all its checks passed)
    already holds, from the id index; the day's ids enter the index when ``accept`` and none
    repeats. Annotation rows are not among ``ids``: they correct ids other days hold."""
    seed_index(index, store, spec, day)
    return index.claim(day, ids.cast(pl.String).to_list(), accept=accept)


def corrections(frame: pl.DataFrame) -> pl.Series:
    """Which annotated rows correct an earlier row of their id (not a reviewed served row,
    which is a new row)."""
    if PROVENANCE[0] not in frame.columns:
        return annotated(frame)
    return annotated(frame) & ~frame[PROVENANCE[3]].is_in(NEW_ROW_REASONS).fill_null(False)


def unknown_annotated_ids(
    index: IdIndex, store: ArtifactStore, spec: DatasetSpec, day: str, raw: pl.DataFrame
) -> list[int]:
    """Positions of the annotation rows whose id no other accepted day holds: a correction
    must correct a row that was accepted."""
    mask = corrections(raw)
    if not mask.any():
        return []
    seed_index(index, store, spec, day)
    ids = raw[spec.id_column].cast(pl.String)
    held = {i for i, _ in index.held_elsewhere(day, ids.filter(mask).drop_nulls().to_list())}
    return [
        row for row, (mine, i) in enumerate(zip(mask, ids, strict=True)) if mine and i not in held
    ]


def day_ids(store: ArtifactStore, spec: DatasetSpec, day: str) -> list[str]:
    """The ids a validated day holds (its corrections name other days' ids)."""
    frame = store.read_parquet(validated_key(day))
    return frame.filter(~corrections(frame))[spec.id_column].cast(pl.String).to_list()


def drift_reference(
    store: ArtifactStore, spec: DatasetSpec
) -> tuple[dict[str, Any], dict[str, list]] | None:
    """The current training dataset's drift summary (stored with the version when it was
    built) and categorical vocabularies; None before a dataset exists."""
    if not store.exists(current_key("training_dataset")):
        return None
    version = store.read_json(current_key("training_dataset"))["version"]
    vocab = store.read_json(dataset_info_key(version))["preprocessing"]["categorical"]
    key = drift_reference_key(version)
    if not store.exists(key):
        raise FileNotFoundError(
            f"dataset {version} has no drift reference at {store.url(key)} (built by an older "
            "Lepton): materialize training_dataset again"
        )
    return store.read_json(key), vocab

"""Batch-level checks of a validated day: ids seen in other days, and the drift reference.

The PSI arithmetic lives in ``lepton_core.drift``; here the checks find their inputs in the
artifact store.
"""

from typing import Any

import polars as pl

from lepton_core.data import accepted_partitions
from lepton_core.drift import reference_summary
from lepton_core.keys import (
    current_key,
    dataset_info_key,
    drift_reference_key,
    split_key,
    validated_key,
)
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore


def ids_in_other_days(
    store: ArtifactStore, spec: DatasetSpec, day: str, ids: pl.Series
) -> list[tuple[str, str]]:
    """(id, day) for each of ``ids`` that another accepted day (all its checks passed)
    already holds. Rejected days do not count: a day refused for repeating another's ids must
    not make that other day fail when it is validated again."""
    found: list[tuple[str, str]] = []
    for manifest in accepted_partitions(store)[0]:
        other = manifest["partition"]
        if other == day:
            continue
        theirs = store.read_parquet(validated_key(other), columns=[spec.id_column]).to_series()
        found += [(i, other) for i in ids.filter(ids.is_in(theirs.implode())).to_list()]
    return sorted(found)


def drift_reference(
    store: ArtifactStore, spec: DatasetSpec
) -> tuple[dict[str, Any], dict[str, list]] | None:
    """The current training dataset's drift summary and categorical vocabularies (None before
    a dataset exists). The summary is stored with the dataset version when it is built; a
    version built before summaries existed gets its summary made once, here, and stored."""
    if not store.exists(current_key("training_dataset")):
        return None
    version = store.read_json(current_key("training_dataset"))["version"]
    vocab = store.read_json(dataset_info_key(version))["preprocessing"]["categorical"]
    key = drift_reference_key(version)
    if not store.exists(key):
        train = store.read_parquet(split_key(version, "train"))
        store.write_json(key, reference_summary(spec, train, vocab))
    return store.read_json(key), vocab

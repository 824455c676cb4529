"""Which output of an upstream asset a step consumes: its own run's, never another run's.

Each unpartitioned asset records its output twice: in the run's own pointer
(``runs/<run id>/<asset>.json``) and in ``current/<asset>.json`` (the latest, for the CLI,
sensors and an asset materialized alone). A step reads the pointer of its own run, or of
the run it re-executes (nearest first); only when none of them produced the asset does
it take ``current/`` (and says so in its metadata). So two training chains running at once
each compress and evaluate their own model.
"""

from typing import Any

import dagster as dg

from lepton_core.keys import current_key, run_pointer_key
from lepton_core.store import ArtifactStore


def publish(
    store: ArtifactStore, context: dg.AssetExecutionContext, asset: str, value: dict[str, Any]
) -> None:
    """Record this run's output of ``asset``, then make it the current one."""
    store.write_json(run_pointer_key(context.run.run_id, asset), value)
    store.write_json(current_key(asset), value)


def lineage(context: dg.AssetExecutionContext) -> list[str]:
    """This run's id, then the runs it re-executes, nearest first."""
    ids, run = [], context.run
    while run is not None:
        ids.append(run.run_id)
        run = context.instance.get_run_by_id(run.parent_run_id) if run.parent_run_id else None
    return ids


def upstream(
    store: ArtifactStore, context: dg.AssetExecutionContext, asset: str
) -> tuple[dict[str, Any], str]:
    """(the output of ``asset`` this step consumes, where it came from: "run <id>" or
    "current" for the latest when no run in this lineage produced it)."""
    for run_id in lineage(context):
        key = run_pointer_key(run_id, asset)
        if store.exists(key):
            return store.read_json(key), f"run {run_id}"
    if not store.exists(current_key(asset)):
        raise FileNotFoundError(
            f"no {asset} to read: neither this run nor any earlier one produced it "
            f"({store.url(current_key(asset))} is missing); materialize {asset} first"
        )
    return store.read_json(current_key(asset)), "current"

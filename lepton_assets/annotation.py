"""People in the loop: the rows of each validated day a person should look at, sent to
Label Studio.

``annotation_candidates`` (daily, after validation) writes
``annotations/candidates/<day>.parquet``: each candidate's id, reason, score, current label,
suggestion and features (``lepton_core.annotation`` says how they are found).
``annotation_tasks`` sends them to Label Studio as tasks (``lepton_core.labeling``), each
once. ``annotation_job`` runs both; neither is part of ingestion: the cross-validated model
costs seconds a day, and a day is ingested whether or not anyone reviews it. The finished
annotations come back through ``annotation_sensor`` as landing files.
"""

import dagster as dg

from lepton_assets.partitions import daily_partitions_def
from lepton_assets.validation import validated_batches
from lepton_core.annotation import REASON, candidates
from lepton_core.keys import quarantine_key, validated_key
from lepton_core.labeling import ID_FIELD, task_of
from lepton_core.serving.monitor import served_rows
from resources.artifact_store import ArtifactStoreResource
from resources.label_studio import LabelStudioResource
from resources.project import ProjectResource


def candidates_key(day: str) -> str:
    return f"annotations/candidates/{day}.parquet"


@dg.asset(
    partitions_def=daily_partitions_def,
    deps=[validated_batches],
    group_name="annotation",
    kinds={"polars", "parquet"},
)
def annotation_candidates(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
) -> dg.MaterializeResult:
    """The day's rows worth a person's review: quarantined for their label, likely
    mislabeled (confident learning), or served with little confidence."""
    spec, store, day = project.get_spec(), artifacts.get_store(), context.partition_key
    accepted = store.read_parquet(validated_key(day))
    quarantine = store.read_parquet(quarantine_key(day))
    found, summary = candidates(spec, accepted, quarantine, served_rows(store, day))
    digest = store.write_parquet(candidates_key(day), found)
    if summary["label_errors_skipped"]:
        context.log.info(f"{day}: no label-error search: {summary['label_errors_skipped']}")
    top = found.head(10).select(spec.id_column, REASON, "score").to_dicts()
    return dg.MaterializeResult(
        metadata={
            "candidates": summary["candidates"],
            "share_flagged": summary["share_flagged"],
            "by_reason": dg.MetadataValue.json(summary["by_reason"]),
            "top_candidates": dg.MetadataValue.json(top),
            "label_errors_skipped": summary["label_errors_skipped"],
            "path": dg.MetadataValue.path(store.url(candidates_key(day))),
            "sha256": digest,
        }
    )


@dg.asset(
    partitions_def=daily_partitions_def,
    deps=[annotation_candidates],
    group_name="annotation",
    kinds={"labelstudio"},
)
def annotation_tasks(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
    label_studio: LabelStudioResource,
) -> dg.MaterializeResult:
    """The day's candidates as Label Studio tasks (features, current label and the model's
    suggestion pre-filled) in the project ``lepton-<dataset>``; a candidate already sent
    (same id and day) is not sent again, so a rerun adds nothing."""
    spec, store, day = project.get_spec(), artifacts.get_store(), context.partition_key
    found = store.read_parquet(candidates_key(day))
    client = label_studio.client()
    project_id = client.project(spec)
    sent = {(t["data"][ID_FIELD], t["data"]["day"]) for t in client.tasks(project_id)}
    rows = [r for r in found.iter_rows(named=True) if (str(r[spec.id_column]), day) not in sent]
    created = client.import_tasks(project_id, [task_of(r, spec, day) for r in rows])
    context.log.info(f"{day}: {created} tasks sent to Label Studio project {project_id}")
    return dg.MaterializeResult(
        metadata={
            "tasks_created": created,
            "already_sent": found.height - len(rows),
            "project": dg.MetadataValue.url(
                f"{label_studio.resolved_url()}/projects/{project_id}/data"
            ),
        }
    )

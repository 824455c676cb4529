"""Sensors: ingestion when landing files change, retraining when validated data grows,
annotations collected from Label Studio, alerts when a run fails."""

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import dagster as dg

from lepton_assets.partitions import landed_days
from lepton_core.keys import current_key, dataset_info_key
from lepton_core.labeling import LabelStudioError, annotation_rows, batch_key
from lepton_core.registry import current_champion
from lepton_core.serving.monitor import DRIFT_PREFIX
from lepton_core.store import ArtifactStore
from resources.alerts import AlertWebhookResource, first_line, one_line, own_error
from resources.artifact_store import ArtifactStoreResource
from resources.label_studio import TOKEN_VARIABLE, LabelStudioResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource
from resources.retraining_policy import RetrainingPolicyResource
from schedules.jobs import ingest_job, training_job

INTERVAL_VARIABLE = "LEPTON_SENSOR_INTERVAL_S"


def interval(default: int) -> int:
    """A sensor's minimum interval in seconds: ``LEPTON_SENSOR_INTERVAL_S`` when it is set
    (the tests and a demo machine shorten every sensor's wait to it), else ``default``.
    Read when the definitions load, as Dagster fixes an interval in the sensor's definition."""
    value = os.environ.get(INTERVAL_VARIABLE)
    if value is None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{INTERVAL_VARIABLE}={value!r} is not a whole number of seconds >= 1")
    return int(value)


def fingerprint(info: dict) -> list:
    """Cheap change detection: size plus mtime (local) or ETag/LastModified (S3)."""
    stamp = info.get("mtime") or info.get("ETag") or info.get("LastModified") or ""
    return [info.get("size"), str(stamp)]


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Ingests and validates exactly the days whose landing files are new or changed.",
)
def landing_sensor(
    context: dg.SensorEvaluationContext, landing: LandingZoneResource
) -> dg.SensorResult:
    """Watches the landing zone (local or s3://). The cursor keeps each file's fingerprint and
    sha256; a file is hashed again only when its fingerprint moves. A day is requested when
    one of its files is new or its content changed, under a run key made of the day and its
    files' hashes, so a second tick, a re-landed identical file or a lost cursor never
    starts the same run twice. Days that are not (yet) partitions, such as today, wait.

    A tick costs the same with a year of history as with a week: it watches only the newest
    ``sensor_days`` partition days (their files alone are statted and kept in the cursor);
    a file landed for an older day is ingested with ``lepton ingest --day`` or a backfill."""
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    store = landing.get_store()
    days, waiting = landed_days(store.folders())
    watched = days[-landing.sensor_days :]
    cursor: dict[str, list] = {}
    requests = []
    for day in watched:
        changed, hashes = False, []
        for key in landing.partition_files(day):
            mark = fingerprint(store.fs.info(store.path(key)))
            before = seen.get(key)
            digest = before[2] if before and before[:2] == mark else store.sha256(key)
            cursor[key] = [*mark, digest]
            changed |= before is None or before[2] != digest
            hashes.append(f"{key}={digest}")
        if changed and hashes:
            run_key = hashlib.sha256("\n".join(hashes).encode()).hexdigest()[:16]
            requests.append(dg.RunRequest(partition_key=day, run_key=f"{day}:{run_key}"))
    if waiting:
        context.log.info(f"landing folders that are not partitions: {waiting}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))


def landing_day() -> str:
    """Today (UTC): annotations collected today land as today's data."""
    return datetime.now(UTC).date().isoformat()


@dg.sensor(
    minimum_interval_seconds=interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lands Label Studio's finished annotations as an annotation batch of today.",
)
def annotation_sensor(
    context: dg.SensorEvaluationContext,
    label_studio: LabelStudioResource,
    landing: LandingZoneResource,
    project: ProjectResource,
) -> dg.SensorResult | dg.SkipReason:
    """Collects the annotations finished since the last tick (the cursor is the highest
    annotation id landed) and writes them as ``<landing>/<today>/annotations-<from>-<to>.parquet``
    (the row with its corrected label and provenance); from there they are data like any
    other: ingested, validated, quarantined, checked for drift, and in the next dataset
    version they supersede the rows of the same ids. The file's name comes from the
    annotation ids, so a tick repeated after a crash writes the same file again, unchanged.
    With Label Studio down the tick skips with the reason; nothing is lost (the cursor stays)."""
    if not label_studio.configured():
        return dg.SkipReason(f"{TOKEN_VARIABLE} is not set: annotation is off")
    spec, after = project.get_spec(), int(context.cursor or 0)
    try:
        client = label_studio.client()
        tasks = client.tasks(client.project(spec))
    except LabelStudioError as exc:
        context.log.warning(f"Label Studio unreachable, retried next tick: {exc}")
        return dg.SkipReason(f"Label Studio unreachable (nothing lost, retried next tick): {exc}")
    rows, last = annotation_rows(tasks, spec, after)
    if rows.is_empty():
        return dg.SkipReason(f"no annotation finished after annotation {after}")
    store = landing.get_store()
    key = batch_key(landing_day(), after, last)
    store.write_parquet(key, rows)
    context.log.info(f"landed {rows.height} annotations as {store.url(key)}")
    return dg.SensorResult(cursor=str(last))


@dg.sensor(
    job=training_job,
    minimum_interval_seconds=interval(60),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Requests the training -> compression -> evaluation -> champion chain once per "
    "new dataset version, when enough new validated days are there.",
)
def retraining_sensor(
    context: dg.SensorEvaluationContext,
    artifacts: ArtifactStoreResource,
    retraining: RetrainingPolicyResource,
) -> dg.SensorResult:
    """Compares the validated days whose checks passed with the days (and their content
    hashes) in the current training dataset. The run key is a hash of the validated days and
    their content, the same inputs training_dataset versions, so each dataset version is
    trained once however often the sensor ticks. The cursor remembers each day's manifest and
    served-drift record by its size and modification time, so a tick rereads only the files
    that changed (a store with years of days costs a listing a tick, not a read a day)."""
    store = artifacts.get_store()
    seen = json.loads(context.cursor or "{}")
    manifests, drift = validated_manifests(store, seen), drift_records(store, seen)
    cursor = json.dumps({**manifests, **drift}, sort_keys=True)
    inputs = sorted((day, digest) for _, _, day, digest, passed in manifests.values() if passed)
    if not inputs:
        return dg.SensorResult(
            skip_reason="no validated day has passed its checks yet", cursor=cursor
        )
    trained: set[tuple[str, str]] = set()
    if store.exists(current_key("training_dataset")):
        version = store.read_json(current_key("training_dataset"))["version"]
        info = store.read_json(dataset_info_key(version))
        trained = {tuple(pair) for pair in info["inputs"]}
    new = [day for day, digest in inputs if (day, digest) not in trained]
    drifted = served_drift_days(store, drift)
    if len(new) < retraining.min_new_days and not (new and drifted):
        reason = f"{len(new)} new validated day(s); retraining waits for {retraining.min_new_days}"
        return dg.SensorResult(skip_reason=reason, cursor=cursor)
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    tags = {"lepton/new_days": ",".join(new)}
    if drifted:
        tags["lepton/served_drift_days"] = ",".join(drifted)
    context.log.info(f"new validated days {new} (served traffic drifted on {drifted}): retraining")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"retrain:{key}", tags=tags)], cursor=cursor
    )


def served_drift_days(store: ArtifactStore, records: dict[str, list]) -> list[str]:
    """Days whose served traffic drifted from the current champion's training data (the
    served_traffic check failed): retraining then starts with one new validated day.
    ``records`` are ``drift_records``."""
    champion = current_champion(store)
    if champion is None:
        return []
    return sorted(
        day
        for _, _, day, model, drifted in records.values()
        if drifted and model == champion["model_prefix"]
    )


def validated_manifests(store: ArtifactStore, seen: dict[str, list]) -> dict[str, list]:
    """Each validated day's manifest as [size, mtime, day, sha256, check passed]."""
    return changed_records(
        store, "validated", seen, lambda m: [m["partition"], m["sha256"], m["check_passed"]]
    )


def drift_records(store: ArtifactStore, seen: dict[str, list]) -> dict[str, list]:
    """Each day's served-drift record as [size, mtime, day, champion, drifted]."""
    return changed_records(
        store, DRIFT_PREFIX, seen, lambda r: [r["day"], r["champion"], bool(r.get("drifted"))]
    )


def changed_records(
    store: ArtifactStore, folder: str, seen: dict[str, list], summary: Callable[[dict], list]
) -> dict[str, list]:
    """Each JSON record under ``folder`` by key, as [size, mtime, *summary(record)]; a record
    is reread only when its size or modification time moved since ``seen``."""
    records: dict[str, list] = {}
    for key, (size, modified) in store.files(folder).items():
        if not key.endswith(".json"):
            continue
        before = seen.get(key)
        if before is not None and before[:2] == [size, modified]:
            records[key] = before
        else:
            records[key] = [size, modified, *summary(store.read_json(key))]
    return records


def error_chain(error: Any) -> list[str]:
    """First line of every error (a SerializableErrorInfo) from Dagster's wrapper to the
    innermost cause."""
    chain: list[str] = []
    while error is not None:
        chain.append(first_line(error))
        error = error.cause
    return chain


# Dagster's failure message when something outside the run marked it failed; when its code
# server saw the run worker die, the engine event before it says how (exit code or signal).
MARKED_FAILED = "This run has been marked as failed from outside the execution context."
WORKER_CRASH = "Run execution process for"


def run_failure_reason(instance: dg.DagsterInstance, run_id: str, message: str) -> str:
    """Why the run itself failed: its failure event's message or, where that is Dagster's
    generic one, the code server's account of the run worker's death."""
    if message != MARKED_FAILED:
        return message
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    crashes = [r.dagster_event.message or "" for r in records if r.dagster_event]
    crashes = [m for m in crashes if WORKER_CRASH in m]  # "[DagsterApiServer] Run execution …"
    return crashes[-1] if crashes else message


def failed_checks(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """The run's failed asset checks, with the reasons and files their results name."""
    records = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    checks = []
    for record in records:
        evaluation = record.dagster_event.event_specific_data if record.dagster_event else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or evaluation.passed:
            continue
        details = {k: v.value for k, v in evaluation.metadata.items()}
        checks.append(
            {
                "asset": evaluation.asset_key.to_user_string(),
                "check": evaluation.check_name,
                "reason": evaluation.description or "",
                "files": details.get("files_with_quarantined_rows", {}),
                "rows_per_rule": details.get("rows_per_broken_rule", {}),
            }
        )
    return checks


def failure_alert(
    run: dg.DagsterRun,
    failures: Sequence[dg.DagsterEvent],
    checks: list[dict],
    run_reason: str = "",
) -> dict:
    """What broke, for people: the job, partition, each failed step (its asset and every
    error in its chain, so the file an ingestion error names is kept) and each failed check
    with its reasons and files. ``summary`` is one line leading with the most specific: a
    failed check's reason; else the reason the run itself failed (``run_reason``) when it is
    not Dagster's list of failed steps (run monitoring's, when a run worker died: the steps
    only saw their run end); else the first failed step's own error (past Dagster's wrappers
    and "Exceeded max_retries"), every line of it, so the fields a validation error names
    are kept."""
    partition = run.tags.get("dagster/partition")
    steps = [
        {
            "step": event.step_key,
            "asset": event.step_key,  # one asset per step in Lepton's jobs
            "errors": error_chain(event.step_failure_data.error),
        }
        for event in failures
    ]
    own_reason = run_reason and not run_reason.startswith("Execution of run for")
    if checks:
        first = f"check {checks[0]['asset']}:{checks[0]['check']} failed: {checks[0]['reason']}"
    elif own_reason:
        first = one_line(run_reason)
    elif steps and steps[0]["errors"]:
        error = own_error(failures[0].step_failure_data.error)
        first = f"{steps[0]['asset']}: {one_line(error.message or '')}"
    else:
        first = "see the run"
    where = f" [{partition}]" if partition else ""
    return {
        "job": run.job_name,
        "run_id": run.run_id,
        "partition": partition,
        "failed_steps": steps,
        "failed_checks": checks,
        "summary": f"Lepton run failed: {run.job_name}{where} ({run.run_id[:8]}): {first}",
    }


@dg.run_failure_sensor(
    name="failure_alert_sensor",
    minimum_interval_seconds=interval(30),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Logs a structured alert for every failed run and posts it to the webhook "
    "named by AlertWebhookResource, if set.",
)
def failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertWebhookResource) -> None:
    run = context.dagster_run
    checks = failed_checks(context.instance, run.run_id)
    reason = run_failure_reason(context.instance, run.run_id, context.failure_event.message or "")
    alert = failure_alert(run, context.get_step_failure_events(), checks, reason)
    context.log.error("lepton_alert " + json.dumps(alert, sort_keys=True))
    posted = alerts.post(alert)
    context.log.info(f"alert {'posted to the webhook' if posted else 'logged (no webhook set)'}")

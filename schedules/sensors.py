"""Sensors: start ingestion when landing files appear or change."""

import hashlib
import json
import re

import dagster as dg

from lepton_assets.partitions import daily_partitions_def
from resources.landing_zone import LandingZoneResource
from schedules.jobs import ingest_job

DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def fingerprint(info: dict) -> list:
    """Cheap change detection: size plus mtime (local) or ETag/LastModified (S3)."""
    stamp = info.get("mtime") or info.get("ETag") or info.get("LastModified") or ""
    return [info.get("size"), str(stamp)]


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
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
    starts the same run twice. Days that are not (yet) partitions, such as today, wait."""
    seen: dict[str, list] = json.loads(context.cursor) if context.cursor else {}
    store = landing.get_store()
    existing = set(daily_partitions_def.get_partition_keys())
    folders = [k.rsplit("/", 1)[-1] for k in store.fs.ls(store.root, detail=False)]
    cursor: dict[str, list] = {}
    requests, waiting = [], []
    for day in sorted(d for d in folders if DAY.match(d)):
        if day not in existing:
            waiting.append(day)
            continue
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
        context.log.info(f"landing folders that are not partitions yet: {waiting}")
    return dg.SensorResult(run_requests=requests, cursor=json.dumps(cursor, sort_keys=True))

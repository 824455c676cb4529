"""Ingestion: one day's landing files -> one typed Parquet batch (``raw/<day>.parquet``)."""

import time

import dagster as dg
import polars as pl

from lepton_assets.partitions import daily_partitions_def
from lepton_core.keys import raw_key, raw_manifest_key
from lepton_core.rows import IngestionError, read_landing_file
from lepton_core.store import sha256_bytes
from resources.artifact_store import ArtifactStoreResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource


@dg.asset(
    partitions_def=daily_partitions_def,
    group_name="ingestion",
    kinds={"polars", "parquet"},
)
def raw_batches(
    context: dg.AssetExecutionContext,
    landing: LandingZoneResource,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
) -> dg.MaterializeResult:
    """One day of raw samples as typed Parquet, exactly as they landed (plus lineage columns).

    Reads every landing file of the day (Parquet, CSV, gzipped CSV) with Polars, records each
    file's sha256, decodes image files the rows point at, and writes ``raw/<day>.parquet`` to
    the artifact store. Rerunning a day on the same files gives byte-identical output.
    """
    spec = project.get_spec()
    pii_key = project.get_pii_key(spec)
    started = time.perf_counter()
    landing_store = landing.get_store()
    day = context.partition_key
    files = landing.partition_files(day)
    # Each file's listing stamp (size, modified time) as it was before it was read: what
    # `lepton run` compares to hash only the files that moved since (cli.changed_days).
    stamps = landing_store.files(day, recursive=False)
    if not files:
        raise IngestionError(f"no landing files for {day} under {landing_store.url(day)}/")
    store = artifacts.get_store()
    frames, sources, rejected, duplicates = [], [], [], []
    seen: dict[str, str] = {}  # sha256 -> the first file with that content
    for key in files:
        data = landing.read(key)
        source = {"file": landing_store.url(key), "sha256": sha256_bytes(data), "bytes": len(data)}
        if source["sha256"] in seen:
            # The same bytes under a second name: read once, reported as one duplicated file.
            duplicates.append({**source, "same_content_as": seen[source["sha256"]]})
            context.log.warning(f"{key}: same content as {seen[source['sha256']]}; read once")
            continue
        seen[source["sha256"]] = source["file"]
        try:
            frame, extra = read_landing_file(
                key, data, spec, lambda path: landing.read(f"{day}/{path}"), pii_key
            )
        except IngestionError as exc:
            if spec.on_unreadable_file == "fail":
                raise
            # Kept whole, byte for byte, with the reason: nothing is lost. With personal data
            # the copy is not made (it would hold them in clear): the landing zone keeps it.
            if not spec.pii:
                store.write_bytes(f"quarantine/{day}/files/{key.rsplit('/', 1)[-1]}", data)
            rejected.append({**source, "reason": str(exc)})
            context.log.warning(f"quarantined the whole file: {exc}")
            continue
        frames.append(frame)
        sources.append({**source, "rows": frame.height, "ignored_columns": extra})
    store.write_json(f"quarantine/{day}/files.json", rejected)
    if not frames:
        raise IngestionError(
            f"no readable landing file for {day}: {[r['reason'] for r in rejected]}"
        )
    # Annotation batches add their provenance columns; other files have none (null there).
    batch = pl.concat(frames, how="diagonal")
    digest = store.write_parquet(raw_key(day), batch)
    store.write_json(
        raw_manifest_key(day),
        {
            "partition": day,
            "files": {s["file"]: s["sha256"] for s in [*sources, *rejected, *duplicates]},
            "stamps": {landing_store.url(k): list(stamps[k]) for k in files},
        },
    )
    seconds = time.perf_counter() - started
    context.log.info(f"ingested {batch.height} rows from {len(files)} files for {day}")
    return dg.MaterializeResult(
        metadata={
            "rows": batch.height,
            "source_files": dg.MetadataValue.json(sources),
            "quarantined_files": dg.MetadataValue.json(rejected),
            "duplicate_files": dg.MetadataValue.json(duplicates),
            "path": dg.MetadataValue.path(store.url(raw_key(day))),
            "sha256": digest,
            "rows_per_second": round(batch.height / seconds, 1),
        }
    )

"""Ingestion: one day's landing files -> one typed Parquet batch (``raw/<day>.parquet``)."""

import gzip
import io
import time

import dagster as dg
import polars as pl

from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.partitions import daily_partitions_def
from resources.artifact_store import ArtifactStoreResource, sha256_bytes
from resources.dataset import DatasetResource
from resources.landing_zone import LandingZoneResource

# Lineage columns added to every row, so a rejected row can be traced to its file and line.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
PARSE_ERRORS = "_parse_errors"


class IngestionError(Exception):
    """A landing file could not be ingested; the message names the file and the reason."""


def raw_key(partition_key: str) -> str:
    return f"raw/{partition_key}.parquet"


def read_landing_file(name: str, data: bytes, spec: DatasetSpec) -> pl.DataFrame:
    """Parse one landing file into the spec's columns and types, with lineage columns.

    Raises ``IngestionError`` naming the file for unreadable bytes (including CSV that is
    not UTF-8) or missing columns. A value that does not fit its type becomes null and its
    row lists ``parse(<column>: <type>)`` in ``_parse_errors``, for validation to quarantine,
    rather than failing the whole file.
    """
    try:
        if name.endswith(".parquet"):
            frame = pl.read_parquet(io.BytesIO(data))
        elif name.endswith((".csv", ".csv.gz")):
            raw = gzip.decompress(data) if name.endswith(".gz") else data
            # Read every column as text first so one bad value cannot fail the whole file.
            frame = pl.read_csv(io.BytesIO(raw), infer_schema=False)
        else:
            raise IngestionError(f"{name}: unsupported file type")
    except (pl.exceptions.PolarsError, OSError, EOFError, ValueError) as exc:
        raise IngestionError(f"{name}: unreadable: {exc}") from exc
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise IngestionError(
            f"{name}: missing columns {missing}; found {frame.columns[:10]}"
            f"{' …' if len(frame.columns) > 10 else ''}"
        )
    types = {spec.id_column: pl.String, spec.label_column: pl.Int64}
    types.update({c: pl.Float64 for c in spec.feature_columns})
    typed = frame.select(pl.col(c).cast(t, strict=False) for c, t in types.items())
    # A value present in the file but not of its type: recorded as a rule of its own.
    failed = [
        pl.when(frame[c].is_not_null() & typed[c].is_null()).then(pl.lit(f"parse({c}: {t})"))
        for c, t in types.items()
    ]
    return typed.with_columns(
        pl.concat_list(failed).list.drop_nulls().alias(PARSE_ERRORS),
        pl.lit(name).alias(SOURCE_FILE),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(SOURCE_ROW),
    )


@dg.asset(
    partitions_def=daily_partitions_def,
    group_name="ingestion",
    kinds={"polars", "parquet"},
)
def raw_batches(
    context: dg.AssetExecutionContext,
    landing: LandingZoneResource,
    artifacts: ArtifactStoreResource,
    dataset: DatasetResource,
) -> dg.MaterializeResult:
    """One day of raw samples as typed Parquet, exactly as they landed (plus lineage columns).

    Reads every landing file of the day (Parquet, CSV, gzipped CSV) with Polars, records each
    file's sha256, and writes ``raw/<day>.parquet`` to the artifact store. Rerunning a day on
    the same files gives byte-identical output.
    """
    spec = dataset.get_spec()
    started = time.perf_counter()
    landing_store = landing.get_store()
    day = context.partition_key
    files = landing.partition_files(day)
    if not files:
        raise IngestionError(f"no landing files for {day} under {landing_store.url(day)}/")
    store = artifacts.get_store()
    frames, sources, rejected = [], [], []
    for key in files:
        data = landing.read(key)
        source = {"file": landing_store.url(key), "sha256": sha256_bytes(data), "bytes": len(data)}
        try:
            frames.append(read_landing_file(key, data, spec))
        except IngestionError as exc:
            if spec.on_unreadable_file == "fail":
                raise
            # Kept whole, byte for byte, with the reason: nothing is lost.
            store.write_bytes(f"quarantine/{day}/files/{key.rsplit('/', 1)[-1]}", data)
            rejected.append({**source, "reason": str(exc)})
            context.log.warning(f"quarantined the whole file: {exc}")
            continue
        sources.append({**source, "rows": frames[-1].height})
    store.write_json(f"quarantine/{day}/files.json", rejected)
    if not frames:
        raise IngestionError(
            f"no readable landing file for {day}: {[r['reason'] for r in rejected]}"
        )
    batch = pl.concat(frames, how="vertical")
    digest = store.write_parquet(raw_key(day), batch)
    seconds = time.perf_counter() - started
    context.log.info(f"ingested {batch.height} rows from {len(files)} files for {day}")
    return dg.MaterializeResult(
        metadata={
            "rows": batch.height,
            "source_files": dg.MetadataValue.json(sources),
            "quarantined_files": dg.MetadataValue.json(rejected),
            "path": dg.MetadataValue.path(store.url(raw_key(day))),
            "sha256": digest,
            "rows_per_second": round(batch.height / seconds, 1),
        }
    )

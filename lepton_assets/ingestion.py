"""Ingestion: one day's landing files -> one typed Parquet batch (``raw/<day>.parquet``)."""

import gzip
import io
import time
from collections.abc import Callable

import dagster as dg
import polars as pl

from lepton_assets.partitions import daily_partitions_def
from lepton_core.images import IMAGE_PIXELS, decode_column
from lepton_core.keys import raw_key, raw_manifest_key
from lepton_core.privacy import protect
from lepton_core.spec import DatasetSpec
from lepton_core.store import sha256_bytes
from resources.artifact_store import ArtifactStoreResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource

# Lineage columns added to every row, so a rejected row can be traced to its file and line.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
PARSE_ERRORS = "_parse_errors"


class IngestionError(Exception):
    """A landing file could not be ingested; the message names the file and the reason."""


def column_types(spec: DatasetSpec) -> dict[str, type[pl.DataType]]:
    """Types by role: ids, categories and image paths text; class labels integers; numeric
    features and regression targets float64."""
    label = pl.Int64 if spec.task == "classification" else pl.Float64
    types: dict[str, type[pl.DataType]] = {spec.id_column: pl.String, spec.label_column: label}
    types.update({c: pl.Float64 for c in spec.feature_columns})
    types.update({c: pl.String for c in spec.categorical_columns})
    if spec.image is not None:
        types[spec.image.column] = pl.String
    return types


DELIMITERS = (";", "\t", "|")


def read_csv(raw: bytes, types: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    """A CSV file with the spec's types when every value parses strictly as its type (the
    common case, at Polars' native speed); otherwise every column as text, so that each bad
    value becomes a row error of its own instead of failing the file. Both readings give the
    same values wherever the strict one succeeds."""
    try:
        return pl.read_csv(io.BytesIO(raw), infer_schema=False, schema_overrides=types)
    except pl.exceptions.ComputeError:
        return pl.read_csv(io.BytesIO(raw), infer_schema=False)


def parse_file(
    name: str, data: bytes, types: dict[str, type[pl.DataType]], redact: bool = False
) -> pl.DataFrame:
    """A landing file as Polars reads it (CSV: see ``read_csv``). A CSV that parses into one
    column names its likely delimiter. With ``redact`` (the spec has personal data) a
    parser's message, which may quote values, is left out of the error."""
    try:
        if name.endswith(".parquet"):
            return pl.read_parquet(io.BytesIO(data))
        if not name.endswith((".csv", ".csv.gz")):
            raise IngestionError(f"{name}: unsupported file type")
        raw = gzip.decompress(data) if name.endswith(".gz") else data
        frame = read_csv(raw, types)
    except (pl.exceptions.PolarsError, OSError, EOFError, ValueError) as exc:
        detail = type(exc).__name__ if redact else exc
        # Redacted, the parser's exception is not chained either: Dagster records a chained
        # cause's message in the event log, and alerts walk the chain.
        raise IngestionError(f"{name}: unreadable: {detail}") from (None if redact else exc)
    header = frame.columns[0] if frame.width == 1 else ""
    likely = next((d for d in DELIMITERS if d in header), None)
    if likely is not None:
        raise IngestionError(
            f"{name}: parsed into one column {header[:60]!r}: it looks {likely!r}-delimited; "
            "landing CSV files must be comma-separated"
        )
    return frame


def check_columns(name: str, frame: pl.DataFrame, spec: DatasetSpec) -> list[str]:
    """The file's columns that the spec does not name (refused unless extra_columns: ignore);
    a missing column fails the file."""
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise IngestionError(
            f"{name}: missing columns {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"found {frame.columns[:10]}{' …' if len(frame.columns) > 10 else ''}"
        )
    extra = [c for c in frame.columns if c not in spec.columns]
    if extra and spec.extra_columns == "fail":
        raise IngestionError(
            f"{name}: columns the spec does not name: {extra[:10]}; remove them, add them to "
            "the spec, or set extra_columns: ignore"
        )
    return extra


def typed_column(source: pl.Series, target: type[pl.DataType], trim: bool) -> pl.Series:
    """``source`` as ``target``, null where a value does not fit. Integers must be integral:
    3.5 (or "3.5") is not read as 3, in any file format."""
    values = source
    if trim and source.dtype == pl.String and target != pl.String:
        values = values.str.strip_chars()
    if target != pl.Int64:
        return values.cast(target, strict=False)
    as_float = values.cast(pl.Float64, strict=False)
    integral = as_float.is_finite() & (as_float == as_float.floor())
    exact = values.cast(pl.Int64, strict=False) if not values.dtype.is_float() else None
    frame = pl.DataFrame({"f": as_float, "ok": integral, "i": exact})
    return frame.select(
        pl.coalesce("i", pl.when("ok").then(pl.col("f").cast(pl.Int64, strict=False)))
    ).to_series()


def row_rules(frame: pl.DataFrame, typed: pl.DataFrame, spec: DatasetSpec) -> list[pl.Expr]:
    """Per row, the ingestion rules it breaks: a value present but not of its type, an
    integer that is not integral, an empty or blank id."""
    rules = []
    for column, dtype in column_types(spec).items():
        present_but_lost = frame[column].is_not_null() & typed[column].is_null()
        rule: pl.Expr = pl.lit(f"parse({column}: {dtype})")
        if dtype == pl.Int64:
            numeric = frame[column].cast(pl.String).str.strip_chars().cast(pl.Float64, strict=False)
            rule = pl.when(numeric.is_not_null()).then(pl.lit(f"not_integral({column})"))
            rule = rule.otherwise(pl.lit(f"parse({column}: {dtype})"))
        rules.append(pl.when(present_but_lost).then(rule))
    blank = typed[spec.id_column].str.strip_chars() == ""
    rules.append(pl.when(blank).then(pl.lit(f"empty({spec.id_column})")))
    return rules


def read_landing_file(
    name: str,
    data: bytes,
    spec: DatasetSpec,
    read_image: Callable[[str], bytes] | None = None,
    pii_key: bytes = b"",
) -> tuple[pl.DataFrame, list[str]]:
    """Parse one landing file into the spec's columns and types, with lineage columns; also
    returns the columns left out (the file's columns the spec does not name).

    Raises ``IngestionError`` naming the file for unreadable bytes (including CSV that is
    not UTF-8), missing columns, or columns the spec does not name (unless the spec says
    ``extra_columns: ignore``). A value that does not fit its type becomes null and its row
    lists the rule (``parse(<column>: <type>)``, ``not_integral(<column>)``,
    ``empty(<id column>)``) in ``_parse_errors``, for validation to quarantine, rather than
    failing the whole file. An image path is read with ``read_image`` (relative to the day's
    folder) and decoded; a missing or undecodable image is a row error too. Personal-data
    columns are dropped or hashed (with ``pii_key``) before anything else reads them.
    """
    types = column_types(spec)
    frame = protect(parse_file(name, data, types, redact=bool(spec.pii)), spec, pii_key)
    extra = check_columns(name, frame, spec)
    trim = spec.trim_whitespace
    typed = pl.DataFrame([typed_column(frame[c], t, trim).alias(c) for c, t in types.items()])
    failed = row_rules(frame, typed, spec)
    if spec.image is not None:
        if read_image is None:
            raise IngestionError(f"{name}: the spec has images but no image reader was given")
        pixels, errors = decode_column(typed[spec.image.column].to_list(), read_image, spec.image)
        typed = typed.with_columns(pl.Series(IMAGE_PIXELS, pixels, dtype=pl.Binary))
        failed.append(pl.lit(pl.Series(errors, dtype=pl.String)))
    lineage = typed.with_columns(
        pl.concat_list(failed).list.drop_nulls().alias(PARSE_ERRORS),
        pl.lit(name).alias(SOURCE_FILE),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(SOURCE_ROW),
    )
    return lineage, extra


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
    batch = pl.concat(frames, how="vertical")
    digest = store.write_parquet(raw_key(day), batch)
    store.write_json(
        raw_manifest_key(day),
        {
            "partition": day,
            "files": {s["file"]: s["sha256"] for s in [*sources, *rejected, *duplicates]},
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

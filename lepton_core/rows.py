"""One door for rows: a landing file, a file given to ``lepton predict`` and a request to the
server are typed here, by the same functions, so a row scores the same whichever way it came.

``column_types`` gives each column of a spec its type by role; ``typed_column`` reads a
column as that type (numbers trimmed of surrounding spaces, integers integral, booleans
spelled true/false); ``typed_rows`` types a frame and names the rules each row breaks.
Ingestion keeps rows that break a rule, with the rule, for validation to quarantine
(``read_landing_file``); scoring refuses them with the row, column and rule
(``typed_features``).
"""

import functools
import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl

from lepton_core.images import IMAGE_PIXELS, decode_column
from lepton_core.privacy import protect
from lepton_core.spec import DatasetSpec

# Lineage columns added to every row, so a rejected row can be traced to its file and line.
SOURCE_FILE = "_source_file"
SOURCE_ROW = "_source_row"
PARSE_ERRORS = "_parse_errors"
FAILED_RULES = "_failed_rules"  # a quarantined row's broken rules
# An annotation batch: a landing file named ``annotations-*`` holds annotated rows (the
# spec's columns) and, in the provenance columns, the task, who annotated it, when, and why
# the row was reviewed. A reviewed row of the data corrects the earlier row of its id (see
# validation and ``data.build_dataset``); a reviewed served row (``NEW_ROW_REASONS``) is a
# new row.
ANNOTATION_PREFIX = "annotations-"
PROVENANCE = ("annotation_task", "annotator", "annotated_at", "annotation_reason")
NEW_ROW_REASONS = ("unsure_served",)


def is_annotation_file(name: str) -> bool:
    return name.rsplit("/", 1)[-1].startswith(ANNOTATION_PREFIX)


def annotated(frame: pl.DataFrame) -> pl.Series:
    """Which rows come from an annotation batch (they carry provenance)."""
    if PROVENANCE[0] not in frame.columns:
        return pl.Series([False] * frame.height, dtype=pl.Boolean)
    return frame[PROVENANCE[0]].is_not_null()


class IngestionError(Exception):
    """A landing file could not be ingested; the message names the file and the reason."""


def label_type(spec: DatasetSpec) -> type[pl.DataType]:
    """A regression target is float64; class labels take the type of ``classes``."""
    if spec.classes is None:
        return pl.Float64
    first = spec.classes[0]
    return (
        pl.Boolean if isinstance(first, bool) else pl.Int64 if isinstance(first, int) else pl.String
    )


def column_types(spec: DatasetSpec) -> dict[str, type[pl.DataType]]:
    """Types by role: ids, categories and image paths text; class labels as declared;
    numeric features and regression targets float64."""
    label = label_type(spec)
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


def check_columns(
    name: str, frame: pl.DataFrame, spec: DatasetSpec, provenance: tuple[str, ...] = ()
) -> list[str]:
    """The file's columns that the spec does not name (refused unless extra_columns: ignore);
    a missing column (of the spec, or an annotation batch's ``provenance``) fails the file."""
    missing = [c for c in (*spec.columns, *provenance) if c not in frame.columns]
    if missing:
        raise IngestionError(
            f"{name}: missing columns {missing[:10]}{' …' if len(missing) > 10 else ''}; "
            f"found {frame.columns[:10]}{' …' if len(frame.columns) > 10 else ''}"
        )
    extra = [c for c in frame.columns if c not in (*spec.columns, *provenance)]
    if extra and spec.extra_columns == "fail":
        raise IngestionError(
            f"{name}: columns the spec does not name: {extra[:10]}; remove them, add them to "
            "the spec, or set extra_columns: ignore"
        )
    return extra


BOOLEANS = {"true": True, "false": False}


def typed_column(
    column: str, source: pl.DataType, target: type[pl.DataType], trim: bool
) -> pl.Expr:
    """``column`` (of type ``source``) as ``target``, null where a value does not fit.
    Integers must be integral: 3.5 (or "3.5") is not read as 3, in any file format. A
    boolean is true/false in any case (or a boolean already); 1, 0, yes and no are not read
    as booleans."""
    values = pl.col(column)
    if trim and source == pl.String and target != pl.String:
        values = values.str.strip_chars()
    if target == pl.Boolean and source != pl.Boolean:
        text = values.cast(pl.String).str.to_lowercase()
        return text.replace_strict(BOOLEANS, default=None, return_dtype=pl.Boolean)
    if target != pl.Int64:
        return values.cast(target, strict=False)
    as_float = values.cast(pl.Float64, strict=False)
    integral = as_float.is_finite() & (as_float == as_float.floor())
    from_float = pl.when(integral).then(as_float.cast(pl.Int64, strict=False))
    if source.is_float():
        return from_float
    return pl.coalesce(values.cast(pl.Int64, strict=False), from_float)


def type_rule(
    column: str, source: pl.DataType, typed: pl.Expr, target: type[pl.DataType]
) -> pl.Expr:
    """Per row, the typing rule the value breaks, or null: a value present but not of its
    type (``parse(<column>: <type>)``), an integer that is not integral."""
    rule: pl.Expr = pl.lit(f"parse({column}: {target})")
    if target == pl.Int64:
        text = pl.col(column).cast(pl.String).str.strip_chars()
        numeric = text.cast(pl.Float64, strict=False)
        rule = pl.when(numeric.is_not_null()).then(pl.lit(f"not_integral({column})"))
        rule = rule.otherwise(pl.lit(f"parse({column}: {target})"))
    return pl.when(pl.col(column).is_not_null() & typed.is_null()).then(rule)


Schema = tuple[tuple[str, pl.DataType, type[pl.DataType]], ...]


@functools.lru_cache(maxsize=256)
def typing_query(schema: Schema, trim: bool, required: tuple[str, ...] = ()) -> list[pl.Expr]:
    """One select that types each (column, source type, target type) and, after those
    columns, names per row the rule each value breaks: its type, and for ``required``
    columns (rows to score) a null, or a NaN in a float column (NaN would reach the model as
    a missing value). Built once per schema: a server types many small frames alike."""
    exprs = {c: typed_column(c, source, target, trim) for c, source, target in schema}
    typing = [e.alias(c) for c, e in exprs.items()]
    checks = [type_rule(c, src, exprs[c], target).alias(f"type:{c}") for c, src, target in schema]
    targets = {c: target for c, _, target in schema}
    nulls = [
        pl.when(pl.col(c).is_null()).then(pl.lit(f"not_null({c})")).alias(f"null:{c}")
        for c in required
    ]
    nans = [
        pl.when(exprs[c].is_nan()).then(pl.lit(f"not_nan({c})")).alias(f"nan:{c}")
        for c in required
        if targets[c] == pl.Float64
    ]
    return typing + checks + nulls + nans


def broken_rules(rules: pl.DataFrame) -> pl.Series:
    """Per row, the list of rules it breaks (one column of ``rules`` per rule). Lists are
    built only for the rows that break a rule (one list a row of a clean 1M-row day took
    seconds, 30x the rest of the typing); every other row gets an empty one."""
    broken = rules.select(pl.any_horizontal(pl.all().is_not_null())).to_series()
    listed = rules.filter(broken).select(pl.concat_list(pl.all()).list.drop_nulls())
    empty = pl.Series([[]], dtype=pl.List(pl.String))
    # The clean rows' empty lists, then the broken rows' lists, gathered back in row order.
    order = pl.concat([(~broken).arg_true(), broken.arg_true()]).arg_sort()
    lists = pl.concat([empty.new_from_index(0, rules.height - listed.height), listed.to_series()])
    return lists.gather(order).alias("rules")


def typed_rows(
    frame: pl.DataFrame,
    spec: DatasetSpec,
    types: dict[str, type[pl.DataType]],
    read_image: Callable[[str], bytes] | None,
    required: tuple[str, ...] = (),
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``frame``'s ``types`` columns typed (and the spec's images decoded into
    ``IMAGE_PIXELS`` with ``read_image``), and per row the rules it breaks, one column a rule
    (null where it holds): its types, and nulls and NaN in ``required`` columns. Both doors
    for rows, ingestion and scoring, type them here, in one Polars query over the frame."""
    source = frame.schema
    schema = tuple((c, source[c], t) for c, t in types.items())
    both = frame.select(typing_query(schema, spec.trim_whitespace, required)).get_columns()
    typed, rules = pl.DataFrame(both[: len(types)]), pl.DataFrame(both[len(types) :])
    if spec.image is not None:
        if read_image is None:
            raise ValueError(f"the spec reads images ({spec.image.column}): give their folder")
        pixels, errors = decode_column(typed[spec.image.column].to_list(), read_image, spec.image)
        typed = typed.with_columns(pl.Series(IMAGE_PIXELS, pixels, dtype=pl.Binary))
        rules = rules.with_columns(pl.Series("image", errors, dtype=pl.String))
    return typed, rules


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
    provenance = PROVENANCE if is_annotation_file(name) else ()
    extra = check_columns(name, frame, spec, provenance)
    typed, rules = typed_rows(frame, spec, types, read_image)
    id_column = pl.col(spec.id_column)
    blank = pl.when(id_column.str.strip_chars() == "").then(pl.lit(f"empty({spec.id_column})"))
    rules = rules.with_columns(typed.select(blank.alias("empty_id")))
    lineage = typed.with_columns(
        broken_rules(rules).alias(PARSE_ERRORS),
        pl.lit(name).alias(SOURCE_FILE),
        pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(SOURCE_ROW),
        *(frame[c].cast(pl.String) for c in provenance),
    )
    return lineage, extra


def checked_features(
    frame: pl.DataFrame, spec: DatasetSpec, read_image: Callable[[str], bytes] | None = None
) -> tuple[pl.DataFrame, pl.Series]:
    """The model's feature columns of rows to score, typed as ingestion types them, and per
    row the rules it breaks: a value not of its type, a null or NaN where the spec allows
    none, an image that cannot be read. Image paths are read with ``read_image``
    (``images.inline_image``: the values are the images, base64). A missing feature column
    fails at once, named."""
    features = spec.columns[2:]
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise ValueError(f"input lacks the model's feature columns {missing[:10]}")
    types = {c: t for c, t in column_types(spec).items() if c in features}
    required = tuple(c for c in features if c not in spec.nullable_columns)
    typed, rules = typed_rows(frame, spec, types, read_image, required)
    return typed, broken_rules(rules)


def refusal(broken: pl.Series) -> str | None:
    """What is wrong with rows to score, naming the first bad row (0-based) and its rules;
    None when every row keeps every rule."""
    bad = (broken.list.len() > 0).arg_true()
    if not len(bad):
        return None
    first = int(bad[0])
    return f"{len(bad)} rows break a rule; row {first}: {', '.join(broken[first])}"


def typed_features(
    frame: pl.DataFrame, spec: DatasetSpec, read_image: Callable[[str], bytes] | None = None
) -> pl.DataFrame:
    """``checked_features``' typed rows; a row that breaks a rule fails them all, named."""
    typed, broken = checked_features(frame, spec, read_image)
    problem = refusal(broken)
    if problem:
        raise ValueError(problem)
    return typed


def image_reader(folder: Path | None) -> Callable[[str], bytes] | None:
    """Reads an image path relative to ``folder``; a path that leaves it is refused."""
    if folder is None:
        return None
    root = folder.resolve()

    def read(path: str) -> bytes:
        target = (root / path).resolve()
        if not target.is_relative_to(root):
            raise ValueError(f"image path {path!r} leaves the image folder")
        return target.read_bytes()

    return read


def json_value(value: Any, column: str, row: int) -> str | None:
    """A JSON value as the text a CSV cell would hold: numbers and booleans in their JSON
    spelling, null as null; a list or an object is refused, naming the column and row."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    raise ValueError(
        f"row {row}: {column}: expected a number, text or null, got a JSON {type(value).__name__}"
    )


def json_frame(columns: dict[str, list[Any]], spec: DatasetSpec) -> pl.DataFrame:
    """Rows that came as JSON (a request to the server), one list per column, as a text frame
    of the model's feature columns in the spec's order, for ``checked_features``: they are
    typed exactly as a landing CSV's cells. A column the spec does not name is refused (unless
    the spec says ``extra_columns: ignore``; the id and label columns are always let by), and
    so is a missing feature the spec does not allow to be null; a missing nullable one is
    null."""
    unknown = [c for c in columns if c not in spec.columns]
    if unknown and spec.extra_columns == "fail":
        raise ValueError(
            f"unknown features {unknown[:10]}; the model reads {spec.columns[2:][:20]}"
        )
    features = spec.columns[2:]
    missing = [c for c in features if c not in columns and c not in spec.nullable_columns]
    if missing:
        raise ValueError(f"missing features {missing[:10]}")
    rows = len(next(iter(columns.values()), []))
    return pl.DataFrame(
        [
            pl.Series(
                c,
                [json_value(v, c, i) for i, v in enumerate(columns[c])]
                if c in columns
                else [None] * rows,
                dtype=pl.String,
            )
            for c in features
        ]
    )

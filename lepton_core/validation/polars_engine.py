"""A Polars execution path for Great Expectations: GX's results, at Polars speed.

GX 1.x has no Polars engine and its pandas engine is slow (DESIGN.md: ~18 s for 1M rows x 130
expectations, against 0.16 s as Polars expressions). ``evaluate`` computes the expectations
below as Polars expressions, in two parallel passes at most, and hands the counts and values to
GX's own result functions (``_format_map_output``, ``_mostly_success``, and the column-set
comparison), so success, counts, percents and lists are formed exactly as GX forms them.

**The contract.** ``native_reason`` says, per expectation and batch, whether this engine runs
it. It runs only:

=================================  ======================================================
type                               keywords; column types
=================================  ======================================================
expect_column_values_to_not_be_null  column, mostly; any column type listed below
expect_column_values_to_be_unique    column, mostly; any column type listed below
expect_column_values_to_be_in_set    column, value_set, mostly; text with a set of strings,
                                     integers with integers, floats with numbers, booleans
                                     with booleans (GX's pandas engine finds no date in a
                                     set of dates: that case goes to GX)
expect_column_values_to_be_between   column, min_value, max_value, strict_min, strict_max,
                                     mostly; Int64 or Float64 with numeric bounds, min <= max
expect_table_columns_to_match_set    column_set (a list of names), exact_match
=================================  ======================================================

Column types: Int64, Float64, String, Boolean, Date, Datetime (with or without a time zone;
only for not-null and unique). An Int64 column with nulls and a value
beyond 2**53 is not run here: read as pandas reads Parquet (float64), it changes value.
Anything else (another type or keyword, ``row_condition``, a suite parameter ``{"$PARAMETER":
…}``, a missing keyword, a missing column, a value set of another type than the column,
datetimes and time zones) goes to GX's own engine: never dropped, never guessed.

Semantics carried over from GX's pandas engine: a value is *missing* when null or NaN;
column-map expectations other than not-null skip missing values; ``unexpected_index_list``
holds row positions. The differential corpus (tests/test_gx_corpus.py) holds both engines to
the same results. The three GX result functions imported here are private to GX (leading
underscore); the corpus is what notices if a GX release changes them.
"""

from typing import Any

import polars as pl
from great_expectations.constants import MAX_RESULT_RECORDS
from great_expectations.core import ExpectationValidationResult
from great_expectations.expectations.core.expect_table_columns_to_match_set import (
    _validate_result as columns_match_result,
)
from great_expectations.expectations.expectation import (
    Expectation,
    _format_map_output,
    _mostly_success,
)
from great_expectations.expectations.expectation_configuration import (
    ExpectationConfiguration,
    parse_result_format,
)

NOT_NULL = "expect_column_values_to_not_be_null"
BETWEEN = "expect_column_values_to_be_between"
IN_SET = "expect_column_values_to_be_in_set"
UNIQUE = "expect_column_values_to_be_unique"
COLUMNS_MATCH = "expect_table_columns_to_match_set"
NATIVE_KWARGS: dict[str, frozenset[str]] = {
    NOT_NULL: frozenset({"column", "mostly"}),
    UNIQUE: frozenset({"column", "mostly"}),
    IN_SET: frozenset({"column", "value_set", "mostly"}),
    BETWEEN: frozenset({"column", "min_value", "max_value", "strict_min", "strict_max", "mostly"}),
    COLUMNS_MATCH: frozenset({"column_set", "exact_match"}),
}
REQUIRED_KWARGS: dict[str, frozenset[str]] = {
    COLUMNS_MATCH: frozenset({"column_set"}),
    IN_SET: frozenset({"column", "value_set"}),
}
NATIVE_DTYPES = (pl.Int64, pl.Float64, pl.String, pl.Boolean, pl.Date, pl.Datetime)
EXACT_FLOAT_INT = 2**53
RESULT_FORMAT = parse_result_format({"result_format": "COMPLETE"})
IGNORED_KWARGS = frozenset({"batch_id"})  # GX adds it to every validated configuration


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def native_reason(expectation: Expectation, frame: pl.DataFrame) -> str | None:
    """Why ``expectation`` goes to GX's engine on ``frame``; None when this engine runs it."""
    return config_reason(expectation.configuration, frame, frame.schema)


def config_reason(
    config: ExpectationConfiguration, frame: pl.DataFrame, schema: pl.Schema
) -> str | None:
    """``native_reason`` of one configuration, with the frame's schema read once by the
    caller (building a schema costs more than the checks themselves)."""
    kwargs = {k: v for k, v in config.kwargs.items() if k not in IGNORED_KWARGS}
    allowed = NATIVE_KWARGS.get(config.type)
    if allowed is None:
        return "expectation type"
    other = sorted(set(kwargs) - allowed)
    if other:
        return f"keywords {other}"
    absent = sorted(REQUIRED_KWARGS.get(config.type, frozenset({"column"})) - set(kwargs))
    if absent:
        return f"missing keywords {absent}"
    if any(isinstance(v, dict) for v in kwargs.values()):
        return "a suite parameter"
    mostly = kwargs.get("mostly", 1.0)
    if not is_number(mostly) or not 0 <= mostly <= 1:
        return "mostly outside [0, 1]"
    if config.type == COLUMNS_MATCH:
        names = kwargs["column_set"]
        exact = kwargs.get("exact_match", True)
        ok = isinstance(names, list | set | tuple) and all(isinstance(n, str) for n in names)
        return None if ok and isinstance(exact, bool) else "column_set or exact_match"
    return column_reason(config.type, kwargs, frame, schema)


def column_reason(
    kind: str, kwargs: dict[str, Any], frame: pl.DataFrame, schema: pl.Schema
) -> str | None:
    column = kwargs["column"]
    if not isinstance(column, str) or column not in schema:
        return "column not in the batch"
    dtype = schema[column]
    if dtype not in NATIVE_DTYPES:
        return f"column type {dtype}"
    if dtype == pl.Int64 and frame[column].null_count():
        largest = frame.select(pl.col(column).abs().max()).item()
        if largest is not None and largest > EXACT_FLOAT_INT:
            return "integers beyond 2**53 with nulls (pandas reads them as float64)"
    if kind == BETWEEN:
        return between_reason(dtype, kwargs)
    if dtype == pl.Datetime and kind != NOT_NULL and kind != UNIQUE:
        return f"{kind} on a {dtype} column"
    if kind == IN_SET:
        return in_set_reason(dtype, kwargs["value_set"])
    return None


def between_reason(dtype: pl.DataType, kwargs: dict[str, Any]) -> str | None:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if dtype not in (pl.Int64, pl.Float64):
        return f"bounds on a {dtype} column"
    if low is None and high is None:
        return "no bounds"
    if not all(v is None or is_number(v) for v in (low, high)):
        return "bounds that are not numbers"
    if low is not None and high is not None and low > high:
        return "min_value > max_value"
    if not all(isinstance(kwargs.get(k, False), bool) for k in ("strict_min", "strict_max")):
        return "strict_min/strict_max not booleans"
    return None


def in_set_reason(dtype: pl.DataType, value_set: Any) -> str | None:
    if not isinstance(value_set, list | set | tuple):
        return "value_set not a list"
    values = list(value_set)
    if dtype == pl.String and all(isinstance(v, str) for v in values):
        return None
    ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
    if dtype == pl.Int64 and ints and all(abs(v) <= EXACT_FLOAT_INT for v in values):
        return None
    if dtype == pl.Float64 and all(is_number(v) for v in values):
        return None
    if dtype == pl.Boolean and all(isinstance(v, bool) for v in values):
        return None
    return f"a value set of another type than the {dtype} column"


def missing(schema: pl.Schema, column: str) -> pl.Expr:
    col = pl.col(column)
    return col.is_null() | col.is_nan() if schema[column].is_float() else col.is_null()


def unique_key(schema: pl.Schema, column: str) -> pl.Expr:
    """The values compared for uniqueness: -0.0 and 0.0 are one value to pandas."""
    col = pl.col(column)
    return col + 0.0 if schema[column].is_float() else col


def unexpected(schema: pl.Schema, kind: str, kwargs: dict[str, Any]) -> pl.Expr:
    """True for the rows one column-map expectation rejects."""
    column = kwargs["column"]
    col, absent = pl.col(column), missing(schema, column)
    if kind == NOT_NULL:
        return absent
    if kind == BETWEEN:
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        strict_low, strict_high = kwargs.get("strict_min", False), kwargs.get("strict_max", False)
        outside = pl.lit(False)
        if low is not None:
            outside = outside | ((col <= low) if strict_low else (col < low))
        if high is not None:
            outside = outside | ((col >= high) if strict_high else (col > high))
        return ~absent & outside
    if kind == IN_SET:
        values = list(kwargs["value_set"])
        allowed = pl.Series(values, dtype=schema[column]).implode()
        return ~absent & ~col.is_in(allowed)
    if kind == UNIQUE:
        # pandas' duplicated on the non-missing values. A missing value never equals a
        # present one, so duplicates over the whole column, masked, are the duplicates among
        # the present values.
        return ~absent & unique_key(schema, column).is_duplicated()
    raise ValueError(f"{kind} is not a column-map expectation of the Polars engine")


def evaluate(
    frame: pl.DataFrame, expectations: list[Expectation]
) -> list[ExpectationValidationResult | None]:
    """GX's result for each expectation this engine runs on ``frame`` (``native_reason``),
    None for each it leaves to GX's engine.

    Two lazy queries at most. The first reads each column once and computes, for every
    column-map expectation, its count of unexpected and of missing values (for uniqueness,
    whether any two present values share a hash). The second, only for the expectations that
    found something, computes the positions of their unexpected rows, exactly. A suite that
    passes never builds an index list; the values GX shows (its first ``MAX_RESULT_RECORDS``)
    are gathered only for the expectations that failed."""
    schema = frame.schema
    configs = [e.configuration for e in expectations]
    native = [config_reason(config, frame, schema) is None for config in configs]
    maps = {i: c for i, c in enumerate(configs) if native[i] and c.type != COLUMNS_MATCH}
    counts = _query(frame, [e for i, c in maps.items() for e in _counts(schema, c, i)])
    flagged = [i for i in maps if counts[f"u{i}"]]
    positions = _query(frame, [_positions(schema, maps[i], i) for i in flagged])
    return [
        _result(frame, config, positions.get(f"u{i}", []), counts.get(f"m{i}", 0)) if ok else None
        for i, (config, ok) in enumerate(zip(configs, native, strict=True))
    ]


def _query(frame: pl.DataFrame, aggregates: list[pl.Expr]) -> dict[str, Any]:
    """One row of ``aggregates`` over ``frame``, by alias, from one lazy query."""
    return frame.lazy().select(aggregates).collect().row(0, named=True) if aggregates else {}


def _counts(schema: pl.Schema, config: ExpectationConfiguration, i: int) -> list[pl.Expr]:
    """The first query's aggregates of one column-map expectation: ``u{i}`` is non-zero when
    it may have unexpected rows, ``m{i}`` counts the column's missing values."""
    kind, kwargs = config.type, config.kwargs
    column = kwargs["column"]
    absent = missing(schema, column)
    if kind == UNIQUE:
        # Equal values hash alike, so distinct hashes prove every value unique; sorting 1M
        # hashes costs a fifth of an exact duplicate search. Shared hashes (a duplicate, or
        # a collision) send the column to the exact search of the second query.
        hashes = unique_key(schema, column).filter(~absent).hash().sort()
        flag = (hashes == hashes.shift(1)).any()
    else:
        flag = unexpected(schema, kind, kwargs).sum()
    return [flag.alias(f"u{i}"), absent.sum().alias(f"m{i}")]


def _positions(schema: pl.Schema, config: ExpectationConfiguration, i: int) -> pl.Expr:
    """The second query's aggregate of one expectation: its unexpected rows' positions."""
    return unexpected(schema, config.type, config.kwargs).arg_true().implode().alias(f"u{i}")


def _result(
    frame: pl.DataFrame, config: ExpectationConfiguration, indices: list[int], absent: int
) -> ExpectationValidationResult:
    kwargs = config.kwargs
    if config.type == COLUMNS_MATCH:
        wanted, observed = set(kwargs["column_set"]), set(frame.columns)
        out = columns_match_result(
            observed, wanted, observed - wanted, wanted - observed, kwargs.get("exact_match", True)
        )
    else:
        out = _column_map_output(frame, config.type, kwargs, indices, absent)
    return ExpectationValidationResult(
        success=out["success"], expectation_config=config, result=out["result"]
    )


def _column_map_output(
    frame: pl.DataFrame, kind: str, kwargs: dict[str, Any], indices: list[int], absent: int
) -> dict[str, Any]:
    """GX's ``_validate`` of a column-map expectation, from the unexpected rows' positions
    and the count of missing values."""
    total, unexpected_count = frame.height, len(indices)
    mostly = kwargs.get("mostly", 1.0)
    if kind == NOT_NULL:  # GX's own _validate: against every row, no missing counts
        success = total == 0 or (total - unexpected_count) / total >= mostly
        nonnull = None
    else:
        nonnull = total - absent
        success = total == 0 or nonnull == 0 or _mostly_success(nonnull, unexpected_count, mostly)
    return _format_map_output(
        result_format=RESULT_FORMAT,
        success=success,
        element_count=total,
        nonnull_count=nonnull,
        unexpected_count=unexpected_count,
        unexpected_list=shown_values(frame[kwargs["column"]], indices),
        unexpected_index_list=indices,
        unexpected_index_query=f"df.filter(items={indices}, axis=0)",  # as GX's pandas engine
    )


def shown_values(column: pl.Series, indices: list[int]) -> list[Any]:
    """The first MAX_RESULT_RECORDS unexpected values (GX's cap; the index list is whole), as
    pandas holds them (NaN for a null float, NaT for a null datetime, floats for an integer
    column with nulls), so GX's value counts come out the same."""
    if not indices:
        return []
    if column.dtype == pl.Int64 and column.null_count():
        column = column.cast(pl.Float64)
    return column.gather(indices[:MAX_RESULT_RECORDS]).to_arrow().to_pandas().tolist()

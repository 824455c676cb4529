"""The differential corpus: every expectation type and keyword the Polars engine runs, on
tables with nulls in every proportion, NaN and infinities, -0.0, dates, datetimes with and
without time zones, integers beyond 2**53, whitespace and unicode strings, and ``mostly`` at
every tenth (so exactly at the boundary of each case). Each case runs on the Polars engine
and on GX 1.x's own pandas engine over the same data (as pandas reads it from Parquet), and
the two results must be equal: success, counts, percents, unexpected lists and indices,
observed values. Most cases run natively (the rest, sent to GX by the contract, are compared
too, so the routing itself is checked)."""

import datetime as dt
import functools
import gzip
import hashlib
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import great_expectations as gx
import polars as pl
import pytest
from great_expectations.expectations.row_conditions import Column
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_core.validation import polars_engine
from lepton_core.validation.suite import run_suite

ex = gx.expectations
ROWS = 10
REFERENCE = Path(__file__).parent / "data" / f"gx_reference-{gx.__version__}.json.gz"
# Which rows are null, by proportion.
NULLS: dict[str, Callable[[int], bool]] = {
    "no nulls": lambda i: False,
    "some nulls": lambda i: i == 4,
    "most nulls": lambda i: i not in (0, 7),
    "all nulls": lambda i: True,
}
UTC = dt.UTC
BIG = 2**53 + 1


def values(column: str) -> list[Any]:
    """Ten values per column kind, with repeats (for uniqueness) and edge values."""
    day = dt.date(2024, 2, 28)
    moment = dt.datetime(2024, 3, 31, 1, 30)
    return {
        "i": [1, 2, 2, -3, 0, 7, 16, 17, 2, -1],
        "f": [0.5, math.nan, math.inf, -math.inf, -0.0, 0.0, 16.0, 16.000001, 3.0, 0.5],
        "s": ["a", " a", "a ", "é", "e\u0301", "", "  ", "日本", "a", "<b>"],
        "b": [True, False, True, True, False, True, True, True, False, True],
        "d": [day + dt.timedelta(days=k % 4) for k in range(ROWS)],
        "t": [moment + dt.timedelta(hours=k % 3) for k in range(ROWS)],
        "tz": [(moment + dt.timedelta(hours=k % 3)).replace(tzinfo=UTC) for k in range(ROWS)],
        "big": [BIG, BIG + 1, 1, BIG, -BIG, 2, 3, 4, 5, 6],
    }[column]


DTYPES = {
    "i": pl.Int64,
    "f": pl.Float64,
    "s": pl.String,
    "b": pl.Boolean,
    "d": pl.Date,
    "t": pl.Datetime("us"),
    "tz": pl.Datetime("us", "UTC"),
    "big": pl.Int64,
}


def table(nulls: str, rows: int = ROWS) -> pl.DataFrame:
    null = NULLS[nulls]
    return pl.DataFrame(
        {
            name: pl.Series(
                name,
                [None if null(i) else v for i, v in enumerate(values(name))][:rows],
                dtype=dtype,
            )
            for name, dtype in DTYPES.items()
        }
    )


MOSTLY = [None, *(k / 10 for k in range(11))]


def with_mostly(make: Callable[..., Any], mostly: float | None, **kwargs: Any) -> Any:
    return make(**kwargs) if mostly is None else make(mostly=mostly, **kwargs)


def corpus() -> list[Any]:
    """Every native type and keyword, plus the cases the contract must send to GX."""
    cases: list[Any] = []
    for mostly in MOSTLY:
        for column in DTYPES:
            cases.append(with_mostly(ex.ExpectColumnValuesToNotBeNull, mostly, column=column))
            cases.append(with_mostly(ex.ExpectColumnValuesToBeUnique, mostly, column=column))
        for column, value_set in IN_SETS:
            cases.append(
                with_mostly(
                    ex.ExpectColumnValuesToBeInSet, mostly, column=column, value_set=value_set
                )
            )
        for column, bounds in BETWEENS:
            cases.append(
                with_mostly(ex.ExpectColumnValuesToBeBetween, mostly, column=column, **bounds)
            )
    for column_set, exact in COLUMN_SETS:
        cases.append(ex.ExpectTableColumnsToMatchSet(column_set=column_set, exact_match=exact))
    cases += [
        ex.ExpectTableColumnsToMatchSet(column_set=list(DTYPES)),  # exact_match by default
        ex.ExpectColumnValuesToNotBeNull(
            column="i", row_condition='col("f") > 1', condition_parser="great_expectations"
        ),
        ex.ExpectColumnValuesToBeInSet(
            column="s", value_set=["a"], row_condition='s=="a"', condition_parser="pandas"
        ),
        ex.ExpectColumnValuesToBeBetween(column="i", min_value=0, row_condition=Column("f") > 1),
        ex.ExpectColumnValuesToNotBeNull(column="no_such_column"),
        ex.ExpectColumnMeanToBeBetween(column="f", min_value=0, max_value=10),
    ]
    return cases


IN_SETS: list[tuple[str, list[Any]]] = [
    ("i", [1, 2, 16]),
    ("i", []),
    ("i", ["1", "2"]),  # strings against integers
    ("i", [1.0, 2.5]),  # floats against integers
    ("f", [0.0, 0.5, 16]),
    ("f", ["0.5"]),
    ("s", ["a", " a", "é"]),
    ("s", [1, 2]),  # numbers against strings
    ("s", ["a", 1]),
    ("b", [True]),
    ("d", [dt.date(2024, 2, 28)]),
    ("big", [BIG, 1]),
]
BETWEENS: list[tuple[str, dict[str, Any]]] = [
    ("i", {"min_value": 0, "max_value": 16}),
    ("i", {"min_value": 0}),
    ("i", {"max_value": 2, "strict_max": True}),
    ("i", {"min_value": 0, "max_value": 16, "strict_min": True, "strict_max": True}),
    ("i", {"min_value": 16, "max_value": 0}),  # min > max
    ("f", {"min_value": 0, "max_value": 16}),
    ("f", {"min_value": -0.0, "strict_min": True}),
    ("f", {"max_value": 16.0}),
    ("d", {"min_value": "2024-02-29", "max_value": "2024-03-02"}),
    ("d", {"min_value": dt.datetime(2024, 2, 29)}),  # datetime bounds on a date column
    ("t", {"min_value": dt.datetime(2024, 3, 31, 2), "max_value": dt.datetime(2024, 3, 31, 3)}),
    ("tz", {"max_value": dt.datetime(2024, 3, 31, 2, tzinfo=UTC)}),
    ("big", {"min_value": 0, "max_value": BIG}),
]
COLUMN_SETS: list[tuple[list[str], bool]] = [
    (list(DTYPES), True),
    (list(DTYPES)[:3], True),
    (list(DTYPES)[:3], False),
    ([*DTYPES, "extra"], False),
    ([], False),
]


def comparable(result: Any) -> dict[str, Any]:
    """What must agree: success, the whole result, whether an exception was raised."""
    document = result.to_json_dict()
    return {
        "success": document["success"],
        "result": document["result"],
        "raised": (document.get("exception_info") or {}).get("raised_exception", False),
    }


def case_key(frame: pl.DataFrame, suite: gx.ExpectationSuite) -> str:
    """A digest of a table (its schema and every value) and of the expectations' configs."""
    text = json.dumps(
        [
            str(frame.schema),
            frame.rows(),
            [e.configuration.to_json_dict() for e in suite.expectations],
        ],
        default=repr,
    )
    return hashlib.sha256(text.encode()).hexdigest()


@functools.cache
def stored_reference() -> dict[str, list[dict]]:
    """``REFERENCE``'s results by case, read once a session (empty without the file)."""
    return json.loads(gzip.decompress(REFERENCE.read_bytes())) if REFERENCE.exists() else {}


def gx_results(frame: pl.DataFrame, suite: gx.ExpectationSuite, keep: bool) -> list[dict]:
    """GX's own results (pandas engine) of ``suite`` on ``frame``, as ``comparable`` makes
    them. GX gives the same results for the same table, expectations and GX version, so the
    fixed corpus (``keep``) reads them from ``REFERENCE``, written once per GX version by
    ``LEPTON_GX_REFERENCE=write``; a case the file lacks is run on GX here."""
    stored = stored_reference()
    key = case_key(frame, suite)
    if keep and key in stored:
        return stored[key]
    results = [comparable(r) for r in run_suite(frame, suite, engine="pandas").results]
    if keep and os.environ.get("LEPTON_GX_REFERENCE") == "write":
        stored[key] = results
        REFERENCE.write_bytes(gzip.compress(json.dumps(stored, sort_keys=True).encode(), mtime=0))
    return results


def run_both(
    frame: pl.DataFrame, expectations: list[Any], keep: bool = True
) -> tuple[int, int, list[str]]:
    """(native cases, cases sent to GX, mismatches) of ``expectations`` on ``frame``;
    ``keep``: a case of the fixed corpus, whose GX results are stored (not a generated one)."""
    suite = gx.ExpectationSuite(name="corpus", expectations=expectations)
    reference = gx_results(frame, suite, keep)
    fast = run_suite(frame, suite, engine="polars")
    native = [polars_engine.native_reason(e, frame) is None for e in suite.expectations]
    mismatches = []
    for expectation, ref, got in zip(suite.expectations, reference, fast.results, strict=True):
        if ref != comparable(got):
            config = expectation.configuration
            mismatches.append(f"{config.type}{config.kwargs}: {ref} != {comparable(got)}")
    return sum(native), len(native) - sum(native), mismatches


@pytest.mark.parametrize("nulls", list(NULLS))
def test_polars_and_gx_agree_on_the_corpus(nulls: str):
    native, to_gx, mismatches = run_both(table(nulls), corpus())
    assert mismatches == []
    assert native >= 300 and native + to_gx == len(corpus()), (native, to_gx)


def test_polars_and_gx_agree_on_an_empty_table():
    native, _, mismatches = run_both(table("no nulls", rows=0), corpus())
    assert mismatches == [] and native >= 300


def test_polars_and_gx_agree_beyond_gx_list_cap():
    """GX lists at most 200 unexpected values (all indices): a table with more."""
    frame = pl.DataFrame(
        {
            "f": [float(k % 7) if k % 11 else None for k in range(450)],
            "s": [f"v{k % 5}" for k in range(450)],
        }
    )
    expectations = [
        ex.ExpectColumnValuesToBeBetween(column="f", max_value=2, mostly=0.1),
        ex.ExpectColumnValuesToNotBeNull(column="f"),
        ex.ExpectColumnValuesToBeUnique(column="s"),
        ex.ExpectColumnValuesToBeInSet(column="s", value_set=["v1"]),
    ]
    native, _, mismatches = run_both(frame, expectations)
    assert mismatches == [] and native == len(expectations)


@pytest.mark.parametrize(
    ("expectation", "reason"),
    [
        (ex.ExpectColumnMeanToBeBetween(column="f", min_value=0), "expectation type"),
        (
            ex.ExpectColumnValuesToNotBeNull(
                column="i", row_condition="i>1", condition_parser="pandas"
            ),
            "keywords ['condition_parser', 'row_condition']",
        ),
        (
            ex.ExpectColumnValuesToBeInSet(column="i", value_set={"$PARAMETER": "x"}),
            "a suite parameter",
        ),
        (ex.ExpectTableColumnsToMatchSet(column_set=None), "missing keywords ['column_set']"),
        (
            ex.ExpectColumnValuesToBeInSet(column="i", value_set=["1"]),
            "a value set of another type than the Int64 column",
        ),
        (
            ex.ExpectColumnValuesToBeInSet(column="s", value_set=[1]),
            "a value set of another type than the String column",
        ),
        (
            ex.ExpectColumnValuesToBeBetween(column="i", min_value=2, max_value=1),
            "min_value > max_value",
        ),
        (
            ex.ExpectColumnValuesToBeBetween(column="d", min_value=dt.date(2024, 1, 1)),
            "bounds on a Date column",
        ),
        (
            ex.ExpectColumnValuesToBeInSet(column="tz", value_set=[1]),
            "expect_column_values_to_be_in_set on a "
            "Datetime(time_unit='us', time_zone='UTC') column",
        ),
        (
            ex.ExpectColumnValuesToBeInSet(column="d", value_set=[dt.date(2024, 2, 28)]),
            "a value set of another type than the Date column",
        ),
        (ex.ExpectColumnValuesToBeUnique(column="nope"), "column not in the batch"),
        (
            ex.ExpectColumnValuesToBeUnique(column="big"),
            "integers beyond 2**53 with nulls (pandas reads them as float64)",
        ),
        (ex.ExpectColumnValuesToBeBetween(column="i", min_value=0, max_value=3, mostly=0.5), None),
    ],
)
def test_the_contract_names_why_an_expectation_goes_to_gx(expectation: Any, reason: str | None):
    assert polars_engine.native_reason(expectation, table("some nulls")) == reason


NUMBERS = st.one_of(
    st.none(),
    st.integers(-5, 5).map(float),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 0.1, 2.5]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    floats=st.lists(NUMBERS, min_size=0, max_size=12),
    texts=st.lists(
        st.one_of(st.none(), st.sampled_from(["a", " a", "b", "é", ""])), min_size=12, max_size=12
    ),
    low=st.integers(-4, 2),
    width=st.integers(0, 6),
    mostly=st.sampled_from([None, 0.0, 0.25, 0.5, 0.75, 0.8, 0.9, 1.0]),
    value_set=st.lists(st.sampled_from(["a", "b", "é", " a"]), max_size=3),
)
def test_polars_and_gx_agree_on_generated_tables(
    floats: list[float | None],
    texts: list[str | None],
    low: int,
    width: int,
    mostly: float | None,
    value_set: list[str],
):
    frame = pl.DataFrame(
        {
            "f": pl.Series(floats, dtype=pl.Float64),
            "i": pl.Series(
                [None if v is None or not math.isfinite(v) else int(v) for v in floats],
                dtype=pl.Int64,
            ),
            "s": pl.Series(texts[: len(floats)], dtype=pl.String),
        }
    )
    expectations = [
        with_mostly(
            ex.ExpectColumnValuesToBeBetween,
            mostly,
            column="f",
            min_value=low,
            max_value=low + width,
        ),
        with_mostly(
            ex.ExpectColumnValuesToBeBetween, mostly, column="i", min_value=low, strict_min=True
        ),
        with_mostly(ex.ExpectColumnValuesToNotBeNull, mostly, column="f"),
        with_mostly(ex.ExpectColumnValuesToBeUnique, mostly, column="f"),
        with_mostly(ex.ExpectColumnValuesToBeUnique, mostly, column="i"),
        with_mostly(ex.ExpectColumnValuesToBeInSet, mostly, column="s", value_set=value_set),
    ]
    native, _, mismatches = run_both(frame, expectations, keep=False)
    assert mismatches == [] and native == len(expectations)

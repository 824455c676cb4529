"""Differential tests: the Polars engine against GX's own pandas engine, expectation by
expectation: same success flags, same unexpected counts, same unexpected rows."""

import math
from typing import Literal

import great_expectations as gx
import polars as pl
import pytest

from lepton_assets.demo import digits_frame
from lepton_core.spec import DIGITS_SPEC
from lepton_core.validation.suite import build_suite, run_suite

ex = gx.expectations


def corrupted() -> pl.DataFrame:
    frame = digits_frame().head(400).with_row_index("_n")

    def at(rows: dict[int, object], column: str) -> pl.Expr:
        expr = pl.col(column)
        for row, value in rows.items():
            expr = pl.when(pl.col("_n") == row).then(pl.lit(value)).otherwise(expr)
        return expr.alias(column)

    return frame.with_columns(
        at({1: math.nan, 2: math.inf, 3: -math.inf, 4: None, 5: 16.0, 6: 16.0001}, "pixel_10").cast(
            pl.Float64
        ),
        at({7: -0.5, 8: 0.0}, "pixel_20").cast(pl.Float64),
        at({9: 10, 10: None, 11: -1}, "label").cast(pl.Int64),
        at({12: "digits-0000", 13: None, 14: "digits-0000", 15: "digits-0013"}, "sample_id").cast(
            pl.String
        ),
    ).drop("_n")


def extra_suite() -> gx.ExpectationSuite:
    return gx.ExpectationSuite(
        name="extra",
        expectations=[
            ex.ExpectColumnValuesToBeBetween(
                column="pixel_10", min_value=0, max_value=16, mostly=0.9
            ),
            ex.ExpectColumnValuesToBeBetween(
                column="pixel_20", min_value=0, max_value=16, strict_min=True, mostly=0.5
            ),
            ex.ExpectColumnValuesToBeBetween(column="pixel_20", max_value=15),
            ex.ExpectColumnValuesToNotBeNull(column="pixel_10", mostly=0.99),
            ex.ExpectColumnValuesToBeInSet(column="label", value_set=[1, 2, 3], mostly=0.2),
            ex.ExpectTableColumnsToMatchSet(column_set=["sample_id", "label"], exact_match=False),
            ex.ExpectColumnMeanToBeBetween(column="pixel_30", min_value=0, max_value=16),  # GX only
        ],
    )


def compare(frame: pl.DataFrame, suite: gx.ExpectationSuite) -> int:
    reference = run_suite(frame, suite, engine="pandas")
    fast = run_suite(frame, suite, engine="polars")
    assert len(reference.results) == len(fast.results) == len(suite.expectations)
    failures = 0
    for ref, got in zip(reference.results, fast.results, strict=True):
        assert ref.expectation_config is not None and got.expectation_config is not None
        name = f"{ref.expectation_config.type}{ref.expectation_config.kwargs}"
        assert got.expectation_config.type == ref.expectation_config.type
        assert got.success == ref.success, name
        if ref.result and "unexpected_count" in ref.result:
            assert got.result["unexpected_count"] == ref.result["unexpected_count"], name
            assert sorted(got.result["unexpected_index_list"]) == sorted(
                ref.result["unexpected_index_list"]
            ), name
        failures += not ref.success
    assert fast.success == reference.success
    return failures


def test_same_verdicts_on_clean_digits():
    assert compare(digits_frame().head(300), build_suite(DIGITS_SPEC)) == 0


def test_same_verdicts_and_rows_on_corrupted_digits():
    assert compare(corrupted(), build_suite(DIGITS_SPEC)) >= 5


def test_same_verdicts_with_mostly_strict_bounds_and_a_gx_only_expectation():
    assert compare(corrupted(), extra_suite()) >= 1


def test_a_missing_column_fails_in_both_engines():
    frame = digits_frame().head(50).drop("pixel_00")
    suite = build_suite(DIGITS_SPEC)
    reference = run_suite(frame, suite, engine="pandas")
    fast = run_suite(frame, suite, engine="polars")
    assert [r.success for r in fast.results] == [r.success for r in reference.results]


@pytest.mark.parametrize("engine", ["polars", "pandas"])
def test_results_serialize_as_gx_json(engine: Literal["polars", "pandas"]):
    result = run_suite(corrupted(), build_suite(DIGITS_SPEC), engine=engine)
    document = result.to_json_dict()
    assert isinstance(document, dict) and isinstance(document["statistics"], dict)
    assert document["statistics"]["evaluated_expectations"] == 133
    assert document["success"] is False

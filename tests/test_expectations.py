from datetime import datetime

import polars as pl

from lepton_assets.demo import digits_frame
from lepton_core.spec import DIGITS_SPEC, DatasetSpec
from lepton_core.validation.suite import build_suite, row_failures, run_suite, table_failures


def test_suite_covers_schema_ids_labels_and_every_feature():
    suite = build_suite(DIGITS_SPEC)
    types = [e.expectation_type for e in suite.expectations]
    assert types.count("expect_table_columns_to_match_set") == 1
    assert types.count("expect_column_values_to_be_unique") == 1
    assert types.count("expect_column_values_to_be_in_set") == 1
    assert types.count("expect_column_values_to_be_between") == 64
    assert types.count("expect_column_values_to_not_be_null") == 2 + 64
    assert len(types) == 133


def test_clean_digits_pass_the_suite():
    result = run_suite(digits_frame().head(200), build_suite(DIGITS_SPEC))
    assert result.success
    assert row_failures(result) == {}


def test_bad_rows_are_named_with_the_rules_they_broke():
    frame = digits_frame().head(50).with_row_index("_n")
    frame = frame.with_columns(
        pl.when(pl.col("_n") == 3).then(99.0).otherwise(pl.col("pixel_05")).alias("pixel_05"),
        pl.when(pl.col("_n") == 7).then(12).otherwise(pl.col("label")).alias("label"),
        pl.when(pl.col("_n") == 9).then(None).otherwise(pl.col("pixel_63")).alias("pixel_63"),
        pl.when(pl.col("_n") == 11)
        .then(pl.lit("digits-0000"))
        .otherwise(pl.col("sample_id"))
        .alias("sample_id"),
    ).drop("_n")
    result = run_suite(frame, build_suite(DIGITS_SPEC))
    assert not result.success
    assert row_failures(result) == {
        3: ["expect_column_values_to_be_between(pixel_05)"],
        7: ["expect_column_values_to_be_in_set(label)"],
        9: ["expect_column_values_to_not_be_null(pixel_63)"],
        0: ["expect_column_values_to_be_unique(sample_id)"],
        11: ["expect_column_values_to_be_unique(sample_id)"],
    }
    assert table_failures(result) == []


def test_a_wrong_schema_is_a_batch_failure():
    frame = digits_frame().head(20).rename({"pixel_00": "pixel_xx"})
    result = run_suite(frame, build_suite(DIGITS_SPEC))
    assert "expect_table_columns_to_match_set" in table_failures(result)


def test_suite_parameters_as_gx_documents_them_keep_each_result_with_its_expectation():
    """``{"$PARAMETER": "now()"}`` (no timestamp in the future) and a named parameter from the
    spec: GX resolves them into the configuration it returns, so results are matched back by
    GX's expectation ids, not by configuration."""
    spec = DatasetSpec.model_validate({
        "name": "events", "id_column": "id", "label_column": "y", "classes": [0, 1],
        "feature_columns": ["x"],
        "extra_expectations": [
            {"type": "expect_column_values_to_be_between",
             "kwargs": {"column": "seen", "max_value": {"$PARAMETER": "now()"}}},
            {"type": "expect_column_values_to_be_between",
             "kwargs": {"column": "x", "min_value": {"$PARAMETER": "lowest_x"}}},
        ],
        "suite_parameters": {"lowest_x": 2.0},
    })  # fmt: skip
    frame = pl.DataFrame(
        {"id": ["a", "b", "c"], "y": [0, 1, 0], "x": [1.0, 2.0, 3.0],
         "seen": [datetime(2020, 1, 1), datetime(2999, 1, 1), datetime(2021, 6, 1)]}
    )  # fmt: skip
    suite = build_suite(spec)
    result = run_suite(frame, suite, parameters=spec.suite_parameters)
    configs = [r.expectation_config for r in result.results]
    kinds = [(c.type, c.kwargs.get("column")) if c else None for c in configs]
    assert kinds == [(e.expectation_type, getattr(e, "column", None)) for e in suite.expectations]
    future, low = result.results[-2], result.results[-1]
    assert not future.success and future.result["unexpected_index_list"] == [1]
    assert not low.success and low.result["unexpected_index_list"] == [0]
    assert row_failures(result) == {
        0: ["expect_column_values_to_be_between(x)"],
        1: ["expect_column_values_to_be_between(seen)"],
    }

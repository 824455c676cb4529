"""The bad-input corpus: each case asserts the exact outcome (the error, or the quarantined
rows and their rules) and that the landing zone is byte-identical afterwards."""

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import dagster as dg
import polars as pl
import pytest
import yaml

from lepton_assets.definitions import resources
from lepton_assets.demo import digits_frame
from lepton_assets.ingestion import raw_batches
from lepton_assets.validation import validated_batches
from lepton_core.rows import broken_rules, read_landing_file
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore

from .conftest import tree_bytes

DAY = "2026-01-01"
GOOD = digits_frame().head(40)


def parquet(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


def csv(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_csv(buf)
    return buf.getvalue()


def with_values(column: str, values: dict[int, object], dtype: type[pl.DataType]) -> pl.DataFrame:
    series = GOOD[column].cast(dtype).to_list()
    for row, value in values.items():
        series[row] = value
    return GOOD.with_columns(pl.Series(column, series, dtype=dtype))


# name -> (landing files, expected error (class, text) or quarantined rows {id: rules})
Case = tuple[dict[str, bytes], tuple[str, str] | dict[str, list[str]]]
CASES: dict[str, Callable[[], Case]] = {
    "truncated parquet": lambda: (
        {"a.parquet": parquet(GOOD)[:300]},
        ("IngestionError", f"{DAY}/a.parquet: unreadable"),
    ),
    "csv with a wrong header": lambda: (
        {"a.csv": csv(GOOD.rename({"pixel_00": "pixel_0"}))},
        ("IngestionError", f"{DAY}/a.csv: missing columns ['pixel_00']"),
    ),
    "wrong dtypes": lambda: (
        {"a.csv": csv(with_values("pixel_05", {3: "abc"}, pl.String))},
        {
            "digits-0003": [
                "parse(pixel_05: Float64)",
                "expect_column_values_to_not_be_null(pixel_05)",
            ]
        },
    ),
    "nan and inf": lambda: (
        {"a.parquet": parquet(with_values("pixel_01", {2: math.nan, 4: math.inf}, pl.Float64))},
        {
            "digits-0002": ["expect_column_values_to_not_be_null(pixel_01)"],
            "digits-0004": ["expect_column_values_to_be_between(pixel_01)"],
        },
    ),
    "out-of-range values": lambda: (
        {"a.parquet": parquet(with_values("pixel_03", {5: 17.0, 6: -1.0}, pl.Float64))},
        {
            "digits-0005": ["expect_column_values_to_be_between(pixel_03)"],
            "digits-0006": ["expect_column_values_to_be_between(pixel_03)"],
        },
    ),
    "unknown labels": lambda: (
        {"a.csv": csv(with_values("label", {7: 10}, pl.Int64))},
        {"digits-0007": ["expect_column_values_to_be_in_set(label)"]},
    ),
    "duplicate ids": lambda: (
        {"a.parquet": parquet(with_values("sample_id", {9: "digits-0008"}, pl.String))},
        {"digits-0008": ["expect_column_values_to_be_unique(sample_id)"] * 1},
    ),
    "an empty file": lambda: ({"a.csv": b""}, ("IngestionError", f"{DAY}/a.csv: unreadable")),
    "no files": lambda: ({}, ("IngestionError", f"no landing files for {DAY} under file://")),
    "non-utf-8 bytes": lambda: (
        {"a.csv": csv(GOOD).replace(b"digits-0001", b"digits-\xff\xfe01")},
        ("IngestionError", f"{DAY}/a.csv: unreadable"),
    ),
    # Integrity at ingestion: nothing is truncated, coerced or dropped in silence.
    "a label that is not integral (parquet)": lambda: (
        {"a.parquet": parquet(with_values("label", {3: 3.5}, pl.Float64))},
        {"digits-0003": ["not_integral(label)", "expect_column_values_to_not_be_null(label)"]},
    ),
    "a label that is not integral (csv)": lambda: (
        {"a.csv": csv(with_values("label", {3: "3.5"}, pl.String))},
        {"digits-0003": ["not_integral(label)", "expect_column_values_to_not_be_null(label)"]},
    ),
    "empty and blank ids": lambda: (
        {"a.parquet": parquet(with_values("sample_id", {4: "", 5: "  "}, pl.String))},
        {"": ["empty(sample_id)"], "  ": ["empty(sample_id)"]},
    ),
    "a column the spec does not name": lambda: (
        {"a.csv": csv(GOOD.with_columns(pl.lit("x").alias("note")))},
        ("IngestionError", f"{DAY}/a.csv: columns the spec does not name: ['note']"),
    ),
    "a semicolon-delimited csv": lambda: (
        {"a.csv": csv(GOOD).replace(b",", b";")},
        ("IngestionError", f"{DAY}/a.csv: parsed into one column"),
    ),
    "whitespace around numbers (trimmed)": lambda: (
        {"a.csv": csv(with_values("pixel_02", {1: " 3 ", 2: "\t4"}, pl.String))},
        {},
    ),
    "the same bytes under two names": lambda: (
        {"a.parquet": parquet(GOOD), "copy.parquet": parquet(GOOD)},
        {},
    ),
    "a file named with markup": lambda: (
        {"<img src=x onerror=alert(1)>.csv": csv(GOOD)},
        ("LandingFileError", "unsafe landing file name"),
    ),
    "a file named with ..": lambda: (
        {"evil..csv": csv(GOOD)},
        ("LandingFileError", "evil..csv: unsafe landing file name"),
    ),
}


def run(instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [raw_batches, validated_batches],
        resources=resources,
        instance=instance,
        partition_key=DAY,
        raise_on_error=False,
    )


def error_of(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    failure = result.failure_data_for_node("raw_batches")
    assert failure is not None and failure.error is not None and failure.error.cause is not None
    return failure.error.cause.cls_name or "", failure.error.cause.message


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input(
    case: str,
    lepton_home: Path,
    landing: ArtifactStore,
    artifacts: ArtifactStore,
    instance: dg.DagsterInstance,
):
    files, expected = CASES[case]()
    (lepton_home / "landing" / DAY).mkdir(parents=True)
    for name, data in files.items():
        landing.write_bytes(f"{DAY}/{name}", data)
    before = tree_bytes(lepton_home / "landing")
    result = run(instance)
    if isinstance(expected, tuple):
        assert not result.success
        cls_name, message = error_of(result)
        assert cls_name == expected[0] and expected[1] in message, message
    else:
        assert result.success
        quarantine = artifacts.read_parquet(f"quarantine/{DAY}.parquet")
        got = {row["sample_id"]: row["_failed_rules"] for row in quarantine.iter_rows(named=True)}
        if case == "duplicate ids":  # both copies of the id are quarantined
            assert quarantine.height == 2 and quarantine["_source_row"].to_list() == [9, 10]
            got = {k: v[:1] for k, v in got.items()}
        assert got == expected
        assert artifacts.read_parquet(f"validated/{DAY}.parquet").height == GOOD.height - len(
            quarantine
        )
    assert tree_bytes(lepton_home / "landing") == before


def test_a_symlink_out_of_the_landing_zone_is_refused(
    tmp_path: Path, lepton_home: Path, landing: ArtifactStore, instance: dg.DagsterInstance
):
    secret = tmp_path / "secret.csv"
    secret.write_bytes(csv(GOOD))
    (lepton_home / "landing" / DAY).mkdir(parents=True)
    os.symlink(secret, lepton_home / "landing" / DAY / "link.csv")
    cls_name, message = error_of(run(instance))
    assert cls_name == "LandingFileError" and "outside the landing zone" in message


def test_unreadable_files_can_be_quarantined_whole(
    tmp_path: Path,
    lepton_home: Path,
    landing: ArtifactStore,
    artifacts: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        yaml.safe_dump({**DIGITS_SPEC.model_dump(), "on_unreadable_file": "quarantine"})
    )
    monkeypatch.setenv("LEPTON_DATASET", str(spec))
    landing.write_bytes(f"{DAY}/a.parquet", parquet(GOOD))
    landing.write_bytes(f"{DAY}/b.parquet", b"PAR1 broken")
    result = run(instance)
    assert result.success
    assert artifacts.read_bytes(f"quarantine/{DAY}/files/b.parquet") == b"PAR1 broken"
    [rejected] = artifacts.read_json(f"quarantine/{DAY}/files.json")
    assert rejected["file"].endswith(f"{DAY}/b.parquet") and "unreadable" in rejected["reason"]
    assert artifacts.read_parquet(f"validated/{DAY}.parquet").height == GOOD.height


def spec_file(tmp_path: Path, **changes: object) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**DIGITS_SPEC.model_dump(), **changes}))
    return str(path)


def test_ignored_columns_and_duplicate_files_are_listed_in_metadata(
    tmp_path: Path,
    landing: ArtifactStore,
    artifacts: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("LEPTON_DATASET", spec_file(tmp_path, extra_columns="ignore"))
    frame = with_values("pixel_02", {1: " 3 "}, pl.String)
    data = csv(frame.with_columns(pl.lit("x").alias("note")))
    landing.write_bytes(f"{DAY}/a.csv", data)
    landing.write_bytes(f"{DAY}/b.csv", data)
    result = run(instance)
    assert result.success
    metadata = result.asset_materializations_for_node("raw_batches")[0].metadata
    [source] = cast(list[dict[str, Any]], metadata["source_files"].value)
    assert source["file"].endswith("a.csv") and source["ignored_columns"] == ["note"]
    [duplicate] = cast(list[dict[str, Any]], metadata["duplicate_files"].value)
    assert duplicate["file"].endswith("b.csv") and duplicate["same_content_as"] == source["file"]
    validated = artifacts.read_parquet(f"validated/{DAY}.parquet")
    assert validated.height == GOOD.height and "note" not in validated.columns
    assert validated["pixel_02"][1] == 3.0


def test_whitespace_is_kept_when_the_spec_says_so(
    tmp_path: Path,
    landing: ArtifactStore,
    artifacts: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setenv("LEPTON_DATASET", spec_file(tmp_path, trim_whitespace=False))
    landing.write_bytes(f"{DAY}/a.csv", csv(with_values("pixel_02", {1: " 3 "}, pl.String)))
    assert run(instance).success
    quarantine = artifacts.read_parquet(f"quarantine/{DAY}.parquet")
    assert quarantine["_failed_rules"].to_list() == [
        ["parse(pixel_02: Float64)", "expect_column_values_to_not_be_null(pixel_02)"]
    ]


def test_csv_reads_the_same_values_on_its_strict_and_its_text_path():
    """A clean CSV is read with the spec's types directly; one value that needs the text
    path (here, spaces) must not change any other value, and both match the Parquet file."""
    strict, _ = read_landing_file("a.csv", csv(GOOD), DIGITS_SPEC)
    text, _ = read_landing_file(
        "a.csv", csv(with_values("pixel_02", {1: " 3 "}, pl.String)), DIGITS_SPEC
    )
    from_parquet, _ = read_landing_file("a.parquet", parquet(GOOD), DIGITS_SPEC)
    assert strict.drop("pixel_02").equals(text.drop("pixel_02"))
    assert strict.drop("_source_file").equals(from_parquet.drop("_source_file"))
    assert text["pixel_02"][1] == 3.0 and strict.schema == text.schema


def test_each_row_lists_the_rules_it_breaks_in_row_order() -> None:
    rules = pl.DataFrame(
        {
            "type:a": [None, "parse(a: Int64)", None, None, "parse(a: Int64)"],
            "null:b": [None, None, None, "not_null(b)", "not_null(b)"],
        },
        schema={"type:a": pl.String, "null:b": pl.String},
    )
    assert broken_rules(rules).to_list() == [
        [],
        ["parse(a: Int64)"],
        [],
        ["not_null(b)"],
        ["parse(a: Int64)", "not_null(b)"],
    ]
    assert broken_rules(rules.head(0)).to_list() == []
    assert broken_rules(rules.slice(2, 1)).to_list() == [[]]

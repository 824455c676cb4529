"""raw_batches and validated_batches through dg.materialize on a real instance."""

import io

import dagster as dg
import polars as pl
import pytest

from lepton_assets.definitions import defs
from lepton_assets.demo import digits_frame
from lepton_assets.ingestion import raw_batches
from lepton_assets.validation import DRIFT_CHECK, SUITE_CHECK, UNIQUE_CHECK, validated_batches
from lepton_core.data import build_dataset, split_keys
from lepton_core.drift import drift, reference_summary
from lepton_core.keys import current_key, raw_key, validated_key
from lepton_core.rows import IngestionError
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore

from .conftest import tree_bytes

DAY = "2026-01-01"  # the first day of the seeded demo (DEMO_END - 6 days)


def materialize(instance: dg.DagsterInstance, partition_key: str = DAY):
    return dg.materialize(
        [raw_batches, validated_batches],
        resources=defs.resources,
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
    )


def land_repeat(landing: ArtifactStore, rows: int) -> None:
    """A CSV for 2026-01-02 holding the first ``rows`` rows of DAY again (same ids)."""
    buf = io.BytesIO()
    landing.read_parquet(f"{DAY}/batch-a.parquet").head(rows).write_csv(buf)
    landing.write_bytes("2026-01-02/repeat.csv", buf.getvalue())


def check_named(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    [check] = [c for c in result.get_asset_check_evaluations() if c.check_name == name]
    return check


def add_late_csv(landing: ArtifactStore) -> None:
    """A second CSV for DAY: two good rows, then three rows that each break a rule."""
    row = landing.read_parquet(f"{DAY}/batch-a.parquet").head(1)

    def variant(sample_id: str, **values: float) -> pl.DataFrame:
        return row.with_columns(
            pl.lit(sample_id).alias("sample_id"),
            *[pl.lit(v).cast(row[k].dtype).alias(k) for k, v in values.items()],
        )

    frame = pl.concat(
        [
            variant("ok-0"),
            variant("ok-1"),
            variant("bad-label", label=11),
            variant("bad-pixel", pixel_07=-5.0),
            variant("bad-both", label=12, pixel_00=17.0),
        ]
    )
    buf = io.BytesIO()
    frame.write_csv(buf)
    landing.write_bytes(f"{DAY}/late.csv", buf.getvalue())


def test_a_demo_day_ingests_and_validates_cleanly(seeded, artifacts, instance):
    result = materialize(instance)
    assert result.success
    raw = artifacts.read_parquet(raw_key(DAY))
    assert raw.height == 257 and raw["_source_file"].unique().sort().to_list() == [
        f"{DAY}/batch-a.parquet",
        f"{DAY}/batch-b.csv",
    ]
    assert artifacts.read_parquet(validated_key(DAY)).height == 257
    assert artifacts.read_parquet(f"quarantine/{DAY}.parquet").height == 0
    docs = artifacts.read_text(f"validation/{DAY}.html")
    assert "Data documentation compiled by Great Expectations" in docs and "digits_suite" in docs
    suite = artifacts.read_json(f"validation/{DAY}.suite.json")
    assert len(suite["expectations"]) == 133
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks == {SUITE_CHECK: True, UNIQUE_CHECK: True, DRIFT_CHECK: True}


def test_bad_rows_are_quarantined_with_file_line_and_rule_and_landing_is_untouched(
    seeded, lepton_home, artifacts, instance
):
    add_late_csv(seeded)
    before = tree_bytes(lepton_home / "landing")
    result = materialize(instance)
    assert result.success  # 3 of 262 rows is under the 5% threshold
    quarantine = artifacts.read_parquet(f"quarantine/{DAY}.parquet").sort("sample_id")
    assert quarantine.select("sample_id", "_source_file", "_source_row").rows() == [
        ("bad-both", f"{DAY}/late.csv", 5),
        ("bad-label", f"{DAY}/late.csv", 3),
        ("bad-pixel", f"{DAY}/late.csv", 4),
    ]
    assert quarantine["_failed_rules"].to_list() == [
        [
            "expect_column_values_to_be_in_set(label)",
            "expect_column_values_to_be_between(pixel_00)",
        ],
        ["expect_column_values_to_be_in_set(label)"],
        ["expect_column_values_to_be_between(pixel_07)"],
    ]
    validated = artifacts.read_parquet(validated_key(DAY))
    assert validated.height == 259 and "_source_file" not in validated.columns
    assert tree_bytes(lepton_home / "landing") == before


def test_rerunning_a_partition_is_byte_identical(seeded, artifacts, instance):
    assert materialize(instance).success
    first = {k: artifacts.read_bytes(k) for k in (raw_key(DAY), validated_key(DAY))}
    assert materialize(instance).success
    assert {k: artifacts.read_bytes(k) for k in first} == first


def test_too_many_quarantined_rows_fail_the_blocking_check(seeded, lepton_home, instance):
    frame = seeded.read_parquet(f"{DAY}/batch-a.parquet").with_columns(pl.lit(99).alias("label"))
    buf = io.BytesIO()
    frame.write_parquet(buf)
    seeded.write_bytes(f"{DAY}/batch-a.parquet", buf.getvalue())
    result = materialize(instance)
    check = check_named(result, SUITE_CHECK)
    assert not check.passed and not result.success
    assert check.description is not None and "quarantined > threshold" in check.description


def test_a_day_without_landing_files_fails_naming_the_uri_and_date(seeded, instance):
    result = materialize(instance, partition_key="2025-06-01")
    assert not result.success
    error = result.failure_data_for_node("raw_batches")
    assert error is not None and error.error is not None and error.error.cause is not None
    assert error.error.cause.cls_name == "IngestionError"
    assert "no landing files for 2025-06-01 under file://" in error.error.cause.message


def test_an_unreadable_file_names_the_file(seeded):
    from lepton_core.rows import read_landing_file
    from lepton_core.spec import DIGITS_SPEC

    with pytest.raises(IngestionError, match=r"2026-01-01/broken.parquet: unreadable"):
        read_landing_file("2026-01-01/broken.parquet", b"PAR1 not really", DIGITS_SPEC)


def test_an_id_already_in_another_day_fails_the_unique_check(seeded, artifacts, instance):
    assert materialize(instance).success
    land_repeat(seeded, rows=2)
    result = materialize(instance, "2026-01-02")
    check = check_named(result, UNIQUE_CHECK)
    assert not check.passed and check.metadata["repeated_ids"].value == 2
    assert check.description is not None and "digits-0000" in check.description
    assert not artifacts.read_json("validated/2026-01-02.json")["check_passed"]
    # Validating the first day again is not blocked by the rejected copy.
    assert check_named(materialize(instance), UNIQUE_CHECK).passed


def test_the_id_check_reads_no_earlier_day(seeded, artifacts, instance):
    """Ids live in the id index: with day 1's validated file gone, day 2's repeat of its
    ids is still found; the index is SQLite inside the local store."""
    assert materialize(instance).success
    artifacts.delete(validated_key(DAY))
    land_repeat(seeded, rows=3)
    check = check_named(materialize(instance, "2026-01-02"), UNIQUE_CHECK)
    assert not check.passed and check.metadata["repeated_ids"].value == 3
    assert artifacts.exists("index/ids.sqlite")


def test_days_accepted_before_the_index_existed_are_loaded_into_it(seeded, artifacts, instance):
    assert materialize(instance).success
    artifacts.local_path("index/ids.sqlite").unlink()  # as a store made by an older Lepton
    land_repeat(seeded, rows=1)
    check = check_named(materialize(instance, "2026-01-02"), UNIQUE_CHECK)
    assert not check.passed and check.metadata["repeated_ids"].value == 1


def test_a_shifted_day_fails_the_drift_check(seeded, artifacts, instance):
    assert materialize(instance).success
    version, info = build_dataset(
        artifacts, DIGITS_SPEC, [artifacts.read_json(f"validated/{DAY}.json")]
    )
    artifacts.write_json(current_key("training_dataset"), {"version": version})
    assert check_named(materialize(instance, "2026-01-02"), DRIFT_CHECK).passed
    shifted = seeded.read_parquet(f"{DAY}/batch-a.parquet").with_columns(
        (pl.col("sample_id") + "-new"), pl.lit(16.0).alias("pixel_10"), pl.lit(3).alias("label")
    )
    buf = io.BytesIO()
    shifted.write_parquet(buf)
    seeded.write_bytes("2026-01-03/shifted.parquet", buf.getvalue())
    # The check reads the summary stored with the dataset, not its train split.
    for key in split_keys(info, "train"):
        artifacts.delete(key)
    check = check_named(materialize(instance, "2026-01-03"), DRIFT_CHECK)
    assert not check.passed and check.description is not None
    assert "label PSI" in check.description and "pixel_10=" in check.description


def test_drift_against_the_stored_summary_equals_drift_against_the_train_split():
    """Fixed PSI values, as the earlier version (reading the whole train split) gave them."""
    frame = digits_frame()
    train, batch = (
        frame[:1200],
        frame[1200:1500].with_columns(
            (pl.col("pixel_10") * 0.5).alias("pixel_10"),
            pl.when(pl.col("label") < 3).then(0).otherwise(pl.col("label")).alias("label"),
        ),
    )
    measured = drift(DIGITS_SPEC, reference_summary(DIGITS_SPEC, train, {}), batch)
    assert measured["label_psi"] == 1.6234
    assert measured["feature_psi"]["pixel_10"] == 5.5283
    assert measured["feature_psi"]["pixel_20"] == 0.0648

"""Annotation candidates: quarantined labels, likely label errors (cleanlab), unsure serving."""

from datetime import timedelta
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from lepton_assets.annotation import candidates_key
from lepton_assets.cli import main
from lepton_assets.definitions import defs
from lepton_assets.demo import seed_landing
from lepton_core.annotation import candidates
from lepton_core.data import accepted_partitions, build_dataset, load_split
from lepton_core.rows import FAILED_RULES
from lepton_core.spec import DIGITS_SPEC, DatasetSpec
from lepton_core.store import ArtifactStore

from .conftest import DEMO_END

SPEC = DatasetSpec(
    name="toy",
    id_column="id",
    label_column="grade",
    classes=["low", "high"],
    feature_columns=["x", "noise"],
    categorical_columns=["shop"],
)

# The least sure served rows' ids: digests of their features (annotation.served_id), pinned.
SERVED_IDS = [
    "served-0146ae6c370c3ea3",
    "served-7a68a5a8a7db276c",
    "served-9a618c58f498ce5c",
    "served-9cc0761c863920ed",
    "served-f83d97d30c3b0499",
]


def toy_rows(n: int = 400, flipped: int = 20) -> tuple[pl.DataFrame, set[str]]:
    """A label that x decides (x > 0.5: high), with ``flipped`` labels turned on purpose."""
    rng = np.random.default_rng(7)
    x = rng.uniform(0, 1, n)
    truth = np.where(x > 0.5, "high", "low")
    flip = rng.choice(n, flipped, replace=False)
    labels = truth.copy()
    labels[flip] = np.where(truth[flip] == "high", "low", "high")
    frame = pl.DataFrame(
        {
            "id": [f"r{i:03d}" for i in range(n)],
            "x": x,
            "noise": rng.normal(size=n),
            "shop": rng.choice(["a", "b", "c"], n),
            "grade": labels,
        }
    )
    return frame, {f"r{i:03d}" for i in flip}


def test_likely_label_errors_are_the_flipped_rows_with_the_right_suggestion():
    frame, flipped = toy_rows()
    found, summary = candidates(SPEC, frame, frame.clear(), None)
    assert set(found["reason"]) == {"likely_mislabeled"}
    caught = set(found["id"]) & flipped
    assert len(caught) >= 18 and found.height <= 26, (len(caught), found.height)
    top = found.head(15)
    assert set(top["id"]) <= flipped  # the highest scores are all real flips
    # The suggestion is the label x decides; the current label is the flipped one.
    for row in top.iter_rows(named=True):
        assert row["suggestion"] != row["grade"]
    assert summary["share_flagged"] == round(found.height / 400, 5)
    assert found["score"].is_sorted(descending=True)


def test_quarantined_labels_and_unsure_served_rows_are_candidates_too():
    frame, _ = toy_rows(n=100, flipped=0)
    quarantine = frame.head(3).with_columns(
        pl.Series("grade", ["medium", "low", "high"]),
        pl.Series(
            FAILED_RULES,
            [
                ["expect_column_values_to_be_in_set(grade)"],
                ["expect_column_values_to_be_between(x)"],
                ["not_null(grade)", "parse(x: Float64)"],
            ],
        ),
    )
    served = frame.drop("id", "grade").with_columns(
        pl.Series("prediction", ["high"] * 100),
        pl.Series("confidence", np.linspace(0.5, 1.0, 100)),
    )
    found, summary = candidates(SPEC, frame, quarantine, served)
    by = {r: found.filter(pl.col("reason") == r) for r in summary["by_reason"]}
    assert by["quarantined_label"]["id"].to_list() == ["r000", "r002"]
    assert by["quarantined_label"]["grade"].to_list() == ["medium", "high"]
    assert by["unsure_served"].height == 5  # the least sure 5 % of 100 served rows
    served_ids = by["unsure_served"]["id"].to_list()  # requests carry no id: a digest is one
    assert len(set(served_ids)) == 5 and all(i.startswith("served-") for i in served_ids)
    assert served_ids == SERVED_IDS  # a digest of the row: the same row, the same id, every run
    assert by["unsure_served"]["score"].to_list() == [0.5, 0.49495, 0.4899, 0.48485, 0.4798]
    assert summary["by_reason"]["quarantined_label"] == 2


def test_no_label_error_search_for_regression_or_images_says_why():
    frame, _ = toy_rows(n=50, flipped=0)
    regression = SPEC.model_copy(
        update={
            "task": "regression",
            "classes": None,
            "label_column": "x",
            "feature_columns": ["noise"],
        }
    )
    found, summary = candidates(regression, frame, frame.clear(), None)
    assert found.height == 0
    assert summary["label_errors_skipped"] == "label errors are looked for in classification only"


@pytest.mark.slow
def test_annotation_job_writes_a_days_candidates_with_metadata(
    lepton_home: Path, seeded: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    day = DEMO_END.isoformat()
    assert main(["ingest", "--day", day]) == 0
    result = defs.resolve_job_def("annotation_job").execute_in_process(
        partition_key=day, instance=dg.DagsterInstance.get()
    )
    assert result.success
    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    found = store.read_parquet(candidates_key(day))
    materialization = result.asset_materializations_for_node("annotation_candidates")[0]
    metadata = materialization.metadata
    assert metadata["candidates"].value == found.height > 0
    assert metadata["by_reason"].value == dict(found["reason"].value_counts().iter_rows())
    assert {"sample_id", "reason", "score", "label", "suggestion", "pixel_00"} <= set(found.columns)


@pytest.mark.slow
def test_annotation_rows_supersede_earlier_rows_and_keep_their_provenance(
    lepton_home: Path, landing: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    """An annotation batch lands as a day's file, goes through ingestion and validation like
    any file, and its corrected labels replace the earlier rows of the same ids in the next
    dataset version; a correction of an unknown id or to a label outside the classes is
    quarantined with its task."""
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    seed_landing(landing, days=3, end=DEMO_END)
    first, third = (DEMO_END - timedelta(days=2)).isoformat(), DEMO_END.isoformat()
    for day in (first, (DEMO_END - timedelta(days=1)).isoformat()):
        assert main(["ingest", "--day", day]) == 0
    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    accepted = store.read_parquet(f"validated/{first}.parquet")
    earlier = accepted.head(2)
    corrected = [(int(label) + 1) % 10 for label in earlier["label"]]
    batch = earlier.with_columns(pl.Series("label", corrected).cast(pl.String))
    unknown = earlier.head(1).with_columns(pl.lit("digits-none").alias("sample_id"))
    outside = accepted.slice(2, 1).with_columns(pl.lit("eleven").alias("label"))
    # A reviewed served row (its id a digest, as candidates make it) is a new row.
    served = accepted.slice(3, 1).with_columns(pl.lit("served-0123456789abcdef").alias("sample_id"))
    rows = pl.concat(
        [batch, unknown.cast({"label": pl.String}), outside, served.cast({"label": pl.String})]
    )
    rows = rows.with_columns(
        pl.Series("annotation_task", ["11", "12", "13", "14", "15"]),
        pl.lit("ann@example.com").alias("annotator"),
        pl.lit("2026-01-07T10:00:00Z").alias("annotated_at"),
        pl.Series("annotation_reason", ["likely_mislabeled"] * 4 + ["unsure_served"]),
    )
    landing.write_parquet(f"{third}/annotations-0001.parquet", rows)
    assert main(["ingest", "--day", third]) == 0
    validated = store.read_json(f"validated/{third}.json")
    assert validated["annotated_rows"] == 3 and validated["check_passed"]
    quarantined = store.read_parquet(f"quarantine/{third}.parquet")
    assert quarantined["annotation_task"].to_list() == ["13", "14"]
    assert quarantined[FAILED_RULES].to_list()[0] == ["annotated_id_unknown(sample_id)"]
    assert "parse(label: Int64)" in quarantined[FAILED_RULES].to_list()[1]

    version, info = build_dataset(store, DIGITS_SPEC, accepted_partitions(store)[0])
    assert info["annotations"] == {"rows": 3, "superseded": {first: 2}}
    provenance = store.read_parquet(f"datasets/{version}/annotations.parquet")
    assert provenance["annotation_task"].to_list() == ["11", "12", "15"]
    assert provenance["day"].to_list() == [third, third, third]
    frames = pl.concat([load_split(store, version, split) for split in ("train", "val", "test")])
    ids = earlier["sample_id"].to_list()
    now = frames.filter(pl.col("sample_id").is_in(ids)).sort("sample_id")
    assert now["label"].to_list() == [c for _, c in sorted(zip(ids, corrected, strict=True))]
    assert frames.height == sum(info["rows"].values()) and "annotator" not in frames.columns
    assert frames.filter(pl.col("sample_id") == "served-0123456789abcdef").height == 1

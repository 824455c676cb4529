"""Annotation candidates: quarantined labels, likely label errors (cleanlab), unsure serving."""

from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest

from lepton_assets.annotation import candidates_key
from lepton_assets.cli import main
from lepton_assets.definitions import defs
from lepton_core.annotation import candidates
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore
from lepton_core.validation.suite import FAILED_RULES

from .conftest import DEMO_END

SPEC = DatasetSpec(
    name="toy",
    id_column="id",
    label_column="grade",
    classes=["low", "high"],
    feature_columns=["x", "noise"],
    categorical_columns=["shop"],
)


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

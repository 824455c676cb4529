"""A second bundled dataset, tabular, through its own spec: ingest -> validate -> train."""

import gzip
import io
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from sklearn.datasets import load_breast_cancer

from lepton_assets.definitions import resources
from lepton_assets.ingestion import raw_batches
from lepton_assets.training import trained_model, training_dataset
from lepton_assets.validation import validated_batches
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore
from resources.horovod_launcher import HorovodLauncherResource

SPEC = Path(__file__).parent / "data" / "breast_cancer.yaml"


def breast_cancer_frame(spec: DatasetSpec) -> pl.DataFrame:
    features, labels = load_breast_cancer(return_X_y=True)
    data = {
        spec.id_column: [f"bc-{i:04d}" for i in range(len(labels))],
        spec.label_column: labels.astype("int64"),
    }
    data.update({c: features[:, j] for j, c in enumerate(spec.feature_columns)})
    return pl.DataFrame(data)


def test_spec_expands_prefix_and_reports_bad_specs(tmp_path: Path):
    spec = DatasetSpec.from_yaml(SPEC)
    assert spec.feature_columns[0] == "f00" and spec.feature_columns[-1] == "f29"
    assert spec.feature_range("f00") == (5.0, 35.0) and spec.feature_range("f01") == (0.0, None)
    bad = tmp_path / "bad.yaml"
    bad.write_text(SPEC.read_text().replace("classes: [0, 1]", "classes: [0]"))
    with pytest.raises(ValueError, match=r"(?s)invalid dataset spec .*bad.yaml.*classes"):
        DatasetSpec.from_yaml(bad)


@pytest.mark.slow
def test_breast_cancer_runs_from_landing_to_a_trained_model(
    lepton_home: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance
):
    monkeypatch.setenv("LEPTON_DATASET", str(SPEC))
    spec = DatasetSpec.from_yaml(SPEC)
    frame = breast_cancer_frame(spec)
    landing = ArtifactStore(f"file://{lepton_home / 'landing'}")
    first, second = frame[:300], frame[300:]
    csv = io.BytesIO()
    first.write_csv(csv)
    landing.write_bytes("2026-02-01/batch.csv.gz", gzip.compress(csv.getvalue()))
    parquet = io.BytesIO()
    second.write_parquet(parquet)
    landing.write_bytes("2026-02-02/batch.parquet", parquet.getvalue())

    for day in ("2026-02-01", "2026-02-02"):
        result = dg.materialize(
            [raw_batches, validated_batches],
            resources=resources,
            instance=instance,
            partition_key=day,
        )
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        assert all(c.passed for c in checks.values())
        check = checks["expectation_suite"]
        assert check.metadata["evaluated_expectations"].value == 5 + 30 + 30 + 1
    result = dg.materialize(
        [training_dataset, trained_model],
        resources={**resources, "horovod": HorovodLauncherResource(num_processes=2)},
        instance=instance,
        run_config={"ops": {"trained_model": {"config": {"epochs": 30}}}},
    )
    model = result.asset_materializations_for_node("trained_model")[0].metadata
    assert model["val_accuracy"].value >= 0.9  # type: ignore[operator]
    artifacts = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    prefix = artifacts.read_json("current/trained_model.json")["prefix"]
    info = artifacts.read_json(f"{prefix}/model.json")
    data = info["dataset_info"]
    assert info["factory"] == "lepton_core.models:mlp"
    assert (data["num_numeric"], data["classes"]) == (30, [0, 1])

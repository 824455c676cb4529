"""The example projects end to end through `lepton run`: user code from outside the package
trained on two Horovod processes, compressed, evaluated and promoted."""

import base64
import importlib.util
import json
from datetime import date
from pathlib import Path
from types import ModuleType

import dagster as dg
import polars as pl
import pytest

from lepton_assets.cli import main
from lepton_core.keys import current_key
from lepton_core.predict import predict_frame
from lepton_core.store import ArtifactStore

from .load import served_predictions

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / name / "make_data.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(project: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    assert main(["run", "--project", str(project)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def retrain(project: Path, home: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    """`lepton run` after a new day: the candidate is evaluated against the champion and
    promoted, or refused by the blessing rules (exit 1 naming them), never crashed; the
    evaluation."""
    code = main(["run", "--project", str(project)])
    out = capsys.readouterr()
    assert code == 0 or (code == 1 and "blessed" in out.err), out.err
    store = ArtifactStore(f"file://{home / 'artifacts'}")
    report = store.read_json(current_key("evaluation_report"))["prefix"]
    return store.read_json(f"{report}/evaluation.json")


@pytest.fixture
def home(lepton_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    return lepton_home


@pytest.mark.slow
def test_tabular_example_with_its_own_model_and_loss(home: Path, capsys):
    example_module("tabular_churn").write_landing(home / "landing")
    project = EXAMPLES / "tabular_churn" / "lepton.yaml"
    summary = run(project, capsys)
    assert summary["status"] == "promoted" and summary["task"] == "classification"
    assert summary["metrics"]["accuracy"] >= 0.8

    store = ArtifactStore(f"file://{home / 'artifacts'}")
    info = store.read_json(f"{summary['champion']}/model.json")
    assert info["factory"] == "churn.model:build" and info["kwargs"]["hidden"] == 64
    assert info["loss"] == "churn.model:smoothed_cross_entropy"
    assert info["preprocessing"]["categorical"]["plan"] == ["basic", "plus", "pro"]
    # Listed [region, plan]: the embeddings are sized in that order (4 regions, 3 plans).
    assert info["dataset_info"]["categorical_cardinalities"] == [5, 4]
    assert info["dataset_info"]["classes"] == ["no", "yes"]
    instance = dg.DagsterInstance.get()
    trained = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
    assert trained is not None and trained.asset_materialization is not None
    assert trained.asset_materialization.metadata["processes"].value == 2
    report = store.read_json(current_key("evaluation_report"))["prefix"]
    assert store.read_json(f"{report}/evaluation.json")["factory"] == "churn.model:build"

    # The champion served: rows as JSON score as `lepton predict` scores them.
    rows = example_module("tabular_churn").customers(20, seed=3)
    expected, _ = predict_frame(store, rows)
    answer = served_predictions(store.uri, rows.drop("churned").to_dicts())
    assert answer["model_version"] == summary["champion"].split("/", 1)[1].replace("/", ".")
    assert answer["predictions"] == expected["prediction"].to_list()

    # Nothing new: a second run trains nothing and says so.
    assert run(project, capsys)["status"] == "unchanged"

    # A day where a few customers are in a region the model never saw: counted by validation,
    # and the retrain it starts scores the champion with the champion's own vocabulary.
    day = home / "landing" / "2026-01-05"
    day.mkdir()
    frame = example_module("tabular_churn").customers(500, seed=9).with_row_index()
    region = pl.when(pl.col("index") < 5).then(pl.lit("arctic")).otherwise(pl.col("region"))
    region = region.alias("region")
    frame.with_columns(region).drop("index").write_csv(day / "customers.csv")
    second = retrain(project, home, capsys)
    assert second["champion_model"] == summary["champion"]
    assert second["champion"]["accuracy"] >= 0.8 and second["candidate"]["accuracy"] >= 0.8
    retrained_info = store.read_json(f"{second['candidate_model']}/model.json")
    assert "arctic" in retrained_info["preprocessing"]["categorical"]["region"]
    validated = instance.get_latest_materialization_event(dg.AssetKey("validated_batches"))
    assert validated is not None and validated.asset_materialization is not None
    assert validated.asset_materialization.metadata["unseen_categories"].value == {
        "plan": 0,
        "region": 5,
    }


@pytest.mark.slow
def test_image_regression_example(home: Path, capsys):
    example_module("image_discs").write_landing(home / "landing", days=4, end=date(2026, 1, 4))
    summary = run(EXAMPLES / "image_discs" / "lepton.yaml", capsys)
    assert summary["status"] == "promoted" and summary["task"] == "regression"
    assert summary["metrics"]["r2"] >= 0.8
    assert set(summary["metrics"]) == {"rmse", "mae", "r2"}
    report = Path(summary["report"].removeprefix("file://")).read_text()
    assert "<th>rmse</th><th>mae</th><th>r2</th>" in report and "BLESSED" in report
    assert 'alt="test predictions" src="data:image/png;base64,' in report

    # `lepton predict` reads the images the rows point at and predicts a number for each.
    day = home / "landing" / "2026-01-04"
    rows = pl.read_csv(day / "labels.csv")
    rows.drop("radius").write_parquet(home / "in.parquet")
    project = str(EXAMPLES / "image_discs" / "lepton.yaml")
    out = str(home / "out.parquet")
    args = ["--input", str(home / "in.parquet"), "--output", out, "--images", str(day)]
    assert main(["predict", "--project", project, *args]) == 0
    predicted = pl.read_parquet(out)
    assert predicted.columns == ["image_id", "prediction"]  # feature columns give way
    error = (predicted["prediction"] - rows["radius"]).abs().mean()
    assert isinstance(error, float) and error < 1.0  # radii span 2..8
    # Served, with each image sent inline (base64): the same numbers as `lepton predict`
    # gives each row on its own (a dynamic-int8 champion's answer depends on its batch, so
    # the server scores such a model a row at a time).
    store = ArtifactStore(f"file://{home / 'artifacts'}")
    inline = [
        {**row, "path": base64.b64encode((day / row["path"]).read_bytes()).decode()}
        for row in rows.head(10).drop("radius").to_dicts()
    ]
    served = served_predictions(store.uri, inline)["predictions"]
    alone = [predict_frame(store, rows[i : i + 1], day)[0]["prediction"][0] for i in range(10)]
    assert served == pytest.approx(alone, rel=1e-5)

    # A later day where a few pictures come from a camera the model never saw: the next run
    # retrains on it, and the champion is scored on the new test rows with its own vocabulary.
    example_module("image_discs").write_landing(home / "landing", days=1, end=date(2026, 1, 5))
    labels = home / "landing" / "2026-01-05" / "labels.csv"
    frame = pl.read_csv(labels).with_row_index()
    camera = pl.when(pl.col("index") < 8).then(pl.lit("cam-c")).otherwise(pl.col("camera"))
    frame.with_columns(camera.alias("camera")).drop("index").write_csv(labels)
    second = retrain(EXAMPLES / "image_discs" / "lepton.yaml", home, capsys)
    store = ArtifactStore(f"file://{home / 'artifacts'}")
    assert second["champion_model"] == summary["champion"]
    assert second["champion"]["r2"] >= 0.7 and second["candidate"]["r2"] >= 0.7
    candidate = store.read_json(f"{second['candidate_model']}/model.json")
    champion = store.read_json(f"{second['champion_model']}/model.json")
    assert candidate["preprocessing"]["categorical"]["camera"] == ["cam-a", "cam-b", "cam-c"]
    assert champion["preprocessing"]["categorical"]["camera"] == ["cam-a", "cam-b"]

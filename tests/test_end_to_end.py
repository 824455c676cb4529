"""The whole lifecycle through Dagster, as `lepton demo` runs it: real Horovod (np=2, Gloo)."""

import getpass
import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lepton_assets.cli import main
from lepton_assets.definitions import defs
from lepton_core.data import load_split
from lepton_core.edge import exportable_prefix
from lepton_core.models import load_model
from lepton_core.registry import champion_history, current_champion
from lepton_core.store import ArtifactStore

from .conftest import DEMO_END
from .load import served_predictions

ASSETS = [
    "raw_batches",
    "validated_batches",
    "training_dataset",
    "trained_model",
    "compressed_model",
    "evaluation_report",
    "champion_model",
]


@pytest.mark.slow
def test_demo_runs_the_whole_graph_and_promotes_a_champion(
    lepton_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    assert main(["demo", "--days", "7", "--end", DEMO_END.isoformat()]) == 0
    out = capsys.readouterr().out
    summary = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    assert summary["status"] == "promoted" and summary["report"].startswith("file://")
    assert summary["metrics"]["accuracy"] >= 0.95 and summary["task"] == "classification"

    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    report_prefix = store.read_json("current/evaluation_report.json")["prefix"]
    report = store.local_path(f"{report_prefix}/report.html")
    assert report.exists() and "data:image/png;base64," in report.read_text()
    assert store.exists(f"{report_prefix}/confusion_matrix.png")
    evaluation = store.read_json(f"{report_prefix}/evaluation.json")
    assert evaluation["candidate"]["accuracy"] >= 0.95
    assert evaluation["blessed"] and evaluation["champion"] is None
    champion = current_champion(store)
    assert champion is not None and champion["model_prefix"] == evaluation["candidate_model"]
    assert summary["champion"] == champion["model_prefix"]

    instance = dg.DagsterInstance.get()
    # The embedded home limits every pool, so one Horovod training step runs at a time.
    assert instance.global_op_concurrency_default_limit == 1
    assert defs.resolve_assets_def("trained_model").op.pool == "horovod_training"
    for name in ASSETS:
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None, name
    trained = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
    assert trained is not None and trained.asset_materialization is not None
    metadata = trained.asset_materialization.metadata
    assert metadata["processes"].value == 2  # really two Horovod ranks
    digests = metadata["rank_param_sha256"].value
    assert isinstance(digests, list) and len(digests) == 2 and len(set(digests)) == 1
    history = metadata["history"].value
    epochs_run = metadata["epochs_run"].value
    assert isinstance(history, list) and isinstance(epochs_run, int)
    assert len(history) == epochs_run <= 25
    assert len(instance.get_runs()) == 8  # 7 ingest runs + 1 training run

    # A second training run is judged against the champion on the same test split; with the
    # regression rules relaxed it is promoted, and a rollback restores the first champion.
    # It also distills the trained model into a student (a Horovod job on two processes): the
    # distilled variant is measured beside the others, in the report's table and plot.
    relaxed = {"min_accuracy": 0.5, "max_regression": 1.0, "max_class_regression": 1.0}
    assert train_again(instance, {"seed": 1, "epochs": 8}, relaxed, {"distill_epochs": 3}).success
    second = latest_evaluation(store)
    folder = second["candidate_model"].rsplit("/", 1)[0]
    variants = {r["variant"]: r for r in store.read_json(f"{folder}/variants.json")["built"]}
    student, teacher = variants["distilled"], variants["fp32"]
    assert student["parameters"] <= teacher["parameters"] / 4
    assert student["val_accuracy"] >= 0.8  # 3 epochs of a student a 16th of the size
    assert "| distilled" in store.read_text(latest_report(store) + "/report.md")
    assert second["champion_model"] == champion["model_prefix"]
    assert second["champion"]["accuracy"] == evaluation["candidate"]["accuracy"]
    assert second["blessed"] and champion_prefix(store) == second["candidate_model"]
    assert main(["rollback"]) == 0
    assert champion_prefix(store) == champion["model_prefix"]
    check_model_card(store, champion["model_prefix"], second["candidate_model"], capsys)

    # Predictions come from the (rolled back) champion.
    test_rows = load_split(store, evaluation["dataset_version"], "test")
    test_rows.drop("label").write_parquet(lepton_home / "in.parquet")
    assert (
        main(
            [
                "predict",
                "--input",
                str(lepton_home / "in.parquet"),
                "--output",
                str(lepton_home / "out.parquet"),
            ]
        )
        == 0
    )
    predictions = pl.read_parquet(lepton_home / "out.parquet")
    assert predictions["sample_id"].to_list() == test_rows["sample_id"].to_list()
    assert (predictions["prediction"] == test_rows["label"]).mean() >= 0.95  # type: ignore[operator]

    # Edge export: the champion as ONNX, checked by onnxruntime in a process without torch,
    # recorded beside it; the server answers the same rows alike on torch and on onnxruntime.
    assert main(["export", "--format", "onnx"]) == 0
    exported = exportable_prefix(store, champion["model_prefix"])
    record = store.read_json(f"{exported}/onnx.json")
    assert record["champion"] == champion["model_prefix"] and record["checks"]["rows"] > 100
    assert record["checks"]["fp32_within_tolerance"] and record["checks"]["int8_ok"]
    assert record["checks"]["int8_top1_agreement"] >= 0.99
    assert store.sha256(f"{exported}/model.onnx") == record["files"]["fp32"]["sha256"]
    rows = test_rows.head(20).drop("sample_id").to_dicts()
    expected = predictions["prediction"].head(20).to_list()
    uri = store.uri
    for runtime in ("torch", "onnx"):
        answer = served_predictions(uri, rows, "--runtime", runtime)
        assert answer["predictions"] == expected, runtime

    # A candidate that breaks a rule is not promoted; the check says which rule.
    strict = {"min_accuracy": 1.0}
    result = train_again(instance, {"seed": 2, "epochs": 1}, strict)
    assert not result.success
    rejected = latest_evaluation(store)
    assert not rejected["blessed"] and "below the floor 1.0000" in rejected["broken_rules"][0]
    assert champion_prefix(store) == champion["model_prefix"]
    check = [c for c in result.get_asset_check_evaluations() if c.check_name == "blessed"][0]
    assert not check.passed and check.description == "; ".join(rejected["broken_rules"])
    report = store.read_text(latest_report(store) + "/report.html")
    assert "NOT BLESSED" in report and "below the floor" in report

    # Retention keeps every model the champion history names, and its dataset, so each
    # rollback target still loads; older checkpoints and job files go.
    checkpoints_before = len(store.files("checkpoints"))
    assert main(["gc", "--keep-last", "1"]) == 0
    assert len(store.files("checkpoints")) < checkpoints_before
    for record in champion_history(store):
        load_model(store, record["model_prefix"])
        assert len(load_split(store, record["dataset_version"], "test")) > 0

    check_backup_and_restore(lepton_home, store, capsys)


def check_model_card(
    store: ArtifactStore, first: str, second: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`lepton lineage` prints the champion's card: its data, code, metrics with intervals,
    verdict, and the promotions and the rollback that made it champion, with who ran them."""
    capsys.readouterr()
    assert main(["lineage"]) == 0
    card = capsys.readouterr().out
    assert card.startswith(f"# Model card: `{first}`") and "the current champion" in card
    days = [f"| 2026-01-0{d} | " for d in range(1, 8)]
    assert all(day in card for day in days) and "| annotation batches |" in card
    assert "Factory `lepton_core.models:cnn`" in card and "code digest `" in card
    assert "| accuracy | 0.9" in card and " – " in card  # the value and its 95 % interval
    assert "Verdict: **BLESSED**, against no champion" in card
    history = card.split("## Champion history")[1]
    events = [line for line in history.splitlines() if line.startswith("| 20")]
    assert [line.split(" | ")[1] for line in events] == ["promote", "promote", "rollback"]
    user = f"| user {getpass.getuser()} |"  # the CLI's runs; train_again's run has no user
    assert [line.endswith(user) for line in events] == [True, False, True]
    assert events[1].endswith("| not recorded |")
    # The card of the second model: promoted once, then rolled back from.
    assert main(["lineage", second, "--html"]) == 0
    page = capsys.readouterr().out
    assert page.startswith("<!doctype html>") and "not the champion" in page
    # Written at each promotion and rollback, beside the report, linked from the champion.
    assert store.exists(f"reports/{first.removeprefix('compressed/')}/card.html")
    latest = dg.DagsterInstance.get().get_latest_materialization_event(
        dg.AssetKey("champion_model")
    )
    assert latest is not None and latest.asset_materialization is not None
    link = latest.asset_materialization.metadata["model_card"].value
    assert link == store.url(f"reports/{first.removeprefix('compressed/')}/card.html")


def check_backup_and_restore(
    home: Path, store: ArtifactStore, capsys: pytest.CaptureFixture[str]
) -> None:
    """Back up, destroy the home, restore: the same champion and status, a rerun that skips
    what was done, and a retrain that works."""
    capsys.readouterr()
    assert main(["status"]) == 0
    before = json.loads(capsys.readouterr().out)
    backup = home.parent / "backup"
    assert main(["backup", str(backup)]) == 0
    assert main(["restore", str(backup)]) == 1  # the home is not empty
    assert "the home is not empty" in capsys.readouterr().err
    shutil.rmtree(home)
    assert main(["restore", str(backup)]) == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    assert json.loads(capsys.readouterr().out) == before
    assert main(["run"]) == 0  # nothing new: no day is ingested again, nothing trained
    out = capsys.readouterr().out
    assert out.startswith("0 new or changed days") and '"status": "unchanged"' in out
    assert main(["run", "--retrain"]) == 0  # the restored dataset and champion train on
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (
        summary["status"] == "promoted"
        and summary["dataset_version"] == (before["training_dataset"]["version"])
    )


def train_again(
    instance: dg.DagsterInstance, training: dict, evaluation: dict, compression: dict | None = None
) -> dg.ExecuteInProcessResult:
    """training_job once more, with these TrainingConfig, EvaluationConfig (and
    CompressionConfig) values."""
    return defs.resolve_job_def("training_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "trained_model": {"config": training},
                "compressed_model": {"config": compression or {}},
                "evaluation_report": {"config": evaluation},
            }
        },
        raise_on_error=False,
    )


def latest_report(store: ArtifactStore) -> str:
    return store.read_json("current/evaluation_report.json")["prefix"]


def latest_evaluation(store: ArtifactStore) -> dict:
    return store.read_json(latest_report(store) + "/evaluation.json")


def champion_prefix(store: ArtifactStore) -> str | None:
    champion = current_champion(store)
    return champion["model_prefix"] if champion else None

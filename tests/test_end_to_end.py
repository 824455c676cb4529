"""The whole lifecycle through Dagster, as `lepton demo` runs it: real Horovod (np=2, Gloo)."""

from pathlib import Path

import dagster as dg
import pytest

from lepton_assets.champion_pointer import champion_history, current_champion
from lepton_assets.cli import main
from lepton_assets.definitions import defs
from resources.artifact_store import ArtifactStore

from .conftest import DEMO_END

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
    assert "test accuracy: " in out and "evaluation report: file://" in out

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

    # A second training run is judged against the champion on the same test split.
    result = defs.resolve_job_def("training_job").execute_in_process(
        instance=instance,
        run_config={"ops": {"trained_model": {"config": {"seed": 1, "epochs": 20}}}},
        raise_on_error=False,
    )
    second = store.read_json(
        f"{store.read_json('current/evaluation_report.json')['prefix']}/evaluation.json"
    )
    assert second["champion_model"] == champion["model_prefix"]
    assert second["champion"]["accuracy"] == evaluation["candidate"]["accuracy"]
    if second["blessed"]:
        assert result.success
        assert [h["model_prefix"] for h in champion_history(store)] == [
            champion["model_prefix"],
            second["candidate_model"],
        ]
    else:  # the blocking check stops champion_model; the pointer stays
        assert not result.success
        assert current_champion(store) == champion

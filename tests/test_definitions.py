import subprocess
import sys
from pathlib import Path

import pytest

from lepton_assets.definitions import defs
from schedules.sensors import INTERVAL_VARIABLE, interval

ROOT = Path(__file__).resolve().parents[1]


def test_definitions_name_the_jobs_groups_and_checks():
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "ingest_job",
        "training_job",
        "rollback_job",
        "monitoring_job",
        "tuning_job",
        "tune_and_train_job",
        "annotation_job",
        "labeling_job",
    }
    selected = {
        name: {
            k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys
        }
        for name in ("training_job", "tuning_job", "tune_and_train_job")
    }
    assert selected["tuning_job"] == {"training_dataset", "tuned_config"}
    assert selected["tune_and_train_job"] == selected["training_job"] | {"tuned_config"}
    sensor = defs.resolve_sensor_def("landing_sensor")
    assert sensor.job_name == "ingest_job" and sensor.minimum_interval_seconds == 30
    assert defs.resolve_sensor_def("retraining_sensor").job_name == "training_job"
    assert defs.resolve_sensor_def("failure_alert_sensor") is not None
    assert defs.resolve_sensor_def("annotation_sensor").minimum_interval_seconds == 60
    assert defs.resolve_schedule_def("nightly_ingest_schedule").cron_schedule == "0 2 * * *"
    graph = defs.resolve_asset_graph()
    groups = {
        key.to_user_string(): graph.get(key).group_name for key in graph.materializable_asset_keys
    }
    assert groups == {
        "raw_batches": "ingestion",
        "validated_batches": "validation",
        "training_dataset": "training",
        "trained_model": "training",
        "tuned_config": "training",
        "compressed_model": "compression",
        "evaluation_report": "evaluation",
        "champion_model": "evaluation",
        "served_traffic": "monitoring",
        "annotation_candidates": "annotation",
        "annotation_tasks": "annotation",
    }
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("validated_batches", "expectation_suite"),
        ("validated_batches", "unique_ids_across_days"),
        ("validated_batches", "drift"),
        ("evaluation_report", "blessed"),
        ("served_traffic", "served_traffic_stable"),
    }


def test_dagster_definitions_validate_passes_on_the_workspace():
    dagster = Path(sys.executable).parent / "dagster"
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_sensor_interval_comes_from_the_environment_when_set(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(INTERVAL_VARIABLE, raising=False)
    assert interval(60) == 60
    monkeypatch.setenv(INTERVAL_VARIABLE, "2")
    assert interval(60) == 2
    for bad in ("0", "1.5", "-3", "soon"):
        monkeypatch.setenv(INTERVAL_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"LEPTON_SENSOR_INTERVAL_S='{bad}' is not a whole"):
            interval(60)

"""The nightly schedule, the retraining sensor and failure alerts, on a real instance."""

import io
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lepton_assets.definitions import defs, resources
from lepton_assets.demo import digits_frame
from lepton_assets.ingestion import raw_batches
from lepton_assets.monitoring import served_traffic
from lepton_assets.validation import validated_batches
from lepton_core.data import build_dataset
from lepton_core.keys import current_key
from lepton_core.models import build_model, save_model
from lepton_core.registry import promote
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore
from resources.alerts import AlertWebhookResource
from resources.artifact_store import ArtifactStoreResource
from resources.retraining_policy import RetrainingPolicyResource
from schedules.sensors import failure_alert_sensor, retraining_sensor

from .conftest import digits_model_info


def test_nightly_schedule_ingests_yesterday_at_two_utc():
    schedule = defs.resolve_schedule_def("nightly_ingest_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "UTC" and schedule.job_name == "ingest_job"
    tick = dg.build_schedule_context(scheduled_execution_time=datetime(2026, 1, 8, 2, tzinfo=UTC))
    requests = schedule.evaluate_tick(tick).run_requests or []
    assert [r.partition_key for r in requests] == ["2026-01-07"]


def validate_day(store: ArtifactStore, day: str, rows: range) -> None:
    """A validated day as validated_batches leaves it (parquet + manifest with checks passed)."""
    frame = digits_frame()[rows.start : rows.stop]
    digest = store.write_parquet(f"validated/{day}.parquet", frame)
    store.write_json(
        f"validated/{day}.json",
        {"partition": day, "rows": frame.height, "sha256": digest, "check_passed": True},
    )


def retrain_tick(
    instance: dg.DagsterInstance, store: ArtifactStore, min_new_days: int = 1, cursor: str = ""
) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor or None,
        resources={
            "artifacts": resources["artifacts"],
            "retraining": RetrainingPolicyResource(min_new_days=min_new_days),
        },
    )
    result = retraining_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def skipped(result: dg.SensorResult) -> bool:
    return not result.run_requests and bool(result.skip_reason)


def test_retraining_is_requested_once_per_new_dataset_version(
    artifacts: ArtifactStore, instance: dg.DagsterInstance
):
    assert skipped(retrain_tick(instance, artifacts))
    validate_day(artifacts, "2026-01-01", range(0, 600))
    first = retrain_tick(instance, artifacts)
    assert first.run_requests
    again = retrain_tick(instance, artifacts, cursor=first.cursor or "")
    assert again.run_requests
    assert again.run_requests[0].run_key == first.run_requests[0].run_key  # deduplicated

    manifests = [artifacts.read_json("validated/2026-01-01.json")]
    version, _ = build_dataset(artifacts, DIGITS_SPEC, manifests)
    artifacts.write_json(current_key("training_dataset"), {"version": version})
    assert skipped(retrain_tick(instance, artifacts))  # nothing new

    validate_day(artifacts, "2026-01-02", range(600, 900))
    assert skipped(retrain_tick(instance, artifacts, min_new_days=2))
    second = retrain_tick(instance, artifacts)
    assert second.run_requests
    request = second.run_requests[0]
    assert request.run_key != first.run_requests[0].run_key
    assert request.tags["lepton/new_days"] == "2026-01-02"


def test_served_traffic_that_drifts_retrains_on_the_first_new_day(
    artifacts: ArtifactStore, instance: dg.DagsterInstance
):
    """The monitoring loop: served features far from the champion's training data fail the
    served_traffic check, and the retraining sensor no longer waits for min_new_days."""
    validate_day(artifacts, "2026-01-01", range(0, 600))
    manifests = [artifacts.read_json("validated/2026-01-01.json")]
    version, _ = build_dataset(artifacts, DIGITS_SPEC, manifests)
    artifacts.write_json(current_key("training_dataset"), {"version": version})
    info = {**digits_model_info("mlp"), "dataset_version": version}
    save_model(artifacts, "models/m/fp32", build_model(info), info)
    promote(artifacts, {"model_prefix": "models/m/fp32"}, "run")
    validate_day(artifacts, "2026-01-02", range(600, 900))
    assert skipped(retrain_tick(instance, artifacts, min_new_days=2))

    digits = digits_frame().head(200)
    served = digits.drop("sample_id", "label")
    bright = served.with_columns(pl.all() * 0 + 16.0)  # every pixel at full ink: drifted
    for day, frame in (("2026-01-03", served), ("2026-01-04", bright)):
        rows = frame.with_columns(
            digits["label"].alias("prediction"), pl.lit(0.9).alias("confidence"),
            pl.lit("m.fp32").alias("model_version"),
        )  # fmt: skip
        artifacts.write_parquet(f"serving/samples/{day}/10/r-1.parquet", rows)
    calm = dg.materialize([served_traffic], resources={"artifacts": ArtifactStoreResource()},
                          partition_key="2026-01-03", instance=instance)  # fmt: skip
    checks = calm.get_asset_check_evaluations()
    assert calm.success and checks[0].passed and checks[0].metadata["rows"].value == 200
    assert skipped(retrain_tick(instance, artifacts, min_new_days=2))  # calm traffic: waits

    drifted = dg.materialize([served_traffic], resources={"artifacts": ArtifactStoreResource()},
                             partition_key="2026-01-04", instance=instance)  # fmt: skip
    check = drifted.get_asset_check_evaluations()[0]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert "features with PSI >" in str(check.metadata["drifted"].value)
    result = retrain_tick(instance, artifacts, min_new_days=2)
    assert result.run_requests
    assert result.run_requests[0].tags["lepton/served_drift_days"] == "2026-01-04"

    # The next tick reads no drift record again; one rewritten (calm now) is read alone.
    reads: list[str] = []
    original = ArtifactStore.read_json
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ArtifactStore, "read_json",
                      lambda self, key: reads.append(key) or original(self, key))  # fmt: skip
        again = retrain_tick(instance, artifacts, min_new_days=2, cursor=result.cursor or "")
        assert again.run_requests and [k for k in reads if k.startswith("serving/")] == []
        record = original(artifacts, "serving/drift/2026-01-04.json")
        artifacts.write_json("serving/drift/2026-01-04.json", {**record, "drifted": []})
        calmed = retrain_tick(instance, artifacts, min_new_days=2, cursor=again.cursor or "")
    assert [k for k in reads if k.startswith("serving/")] == ["serving/drift/2026-01-04.json"]
    assert skipped(calmed)  # no drifted day left: back to waiting for min_new_days


def test_a_retraining_tick_rereads_only_the_manifests_that_changed(
    artifacts: ArtifactStore, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    for i, day in enumerate(["2026-01-01", "2026-01-02", "2026-01-03"]):
        validate_day(artifacts, day, range(300 * i, 300 * i + 300))
    cursor = retrain_tick(instance, artifacts).cursor or ""
    reads: list[str] = []
    original = ArtifactStore.read_json
    monkeypatch.setattr(
        ArtifactStore, "read_json", lambda self, key: reads.append(key) or original(self, key)
    )
    assert retrain_tick(instance, artifacts, cursor=cursor).run_requests
    assert [k for k in reads if k.startswith("validated/")] == []
    artifacts.write_json(  # the third day validated again, now rejected
        "validated/2026-01-03.json",
        {"partition": "2026-01-03", "rows": 1, "sha256": "x", "check_passed": False},
    )
    result = retrain_tick(instance, artifacts, cursor=cursor)
    assert [k for k in reads if k.startswith("validated/")] == ["validated/2026-01-03.json"]
    assert result.run_requests and result.run_requests[0].tags["lepton/new_days"] == (
        "2026-01-01,2026-01-02"
    )


def parquet_bytes(frame: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    frame.write_parquet(buf)
    return buf.getvalue()


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers["Content-Length"])
        Hook.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base name
        pass


def alert_posted_for(
    result: dg.ExecuteInProcessResult, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> dict:
    """Runs the failure sensor on ``result``'s failed run; returns what a real HTTP receiver
    on 127.0.0.1 got."""
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("LEPTON_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
    try:
        run = instance.get_run_by_id(result.run_id)
        [failure] = [
            r.dagster_event
            for r in instance.all_logs(result.run_id)
            if r.dagster_event and r.dagster_event.is_run_failure
        ]
        assert run is not None and failure is not None
        context = dg.build_run_status_sensor_context(
            sensor_name="failure_alert_sensor",
            dagster_instance=instance,
            dagster_run=run,
            dagster_event=failure,
            resources={"alerts": AlertWebhookResource()},
        ).for_run_failure()
        failure_alert_sensor(context)
    finally:
        server.shutdown()
    [message] = Hook.received
    return message


def test_a_failed_run_is_posted_naming_the_asset_partition_and_file(
    lepton_home: Path,
    landing: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    landing.write_bytes("2025-06-01/broken.parquet", b"PAR1 not parquet")
    failed = dg.materialize(
        [raw_batches],
        resources=resources,
        instance=instance,
        partition_key="2025-06-01",
        raise_on_error=False,
    )
    assert not failed.success
    message = alert_posted_for(failed, instance, monkeypatch)
    alert = message["alert"]
    assert alert["run_id"] == failed.run_id and alert["partition"] == "2025-06-01"
    [step] = alert["failed_steps"]
    assert step["asset"] == "raw_batches"
    assert step["errors"][0].startswith(
        "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred"
    )
    assert step["errors"][1].startswith(
        "lepton_core.rows.IngestionError: 2025-06-01/broken.parquet: unreadable"
    )
    assert message["text"].startswith(
        f"Lepton run failed: __ephemeral_asset_job__ [2025-06-01] ({failed.run_id[:8]}): "
        "raw_batches: lepton_core.rows.IngestionError: 2025-06-01/broken.parquet: "
        "unreadable"
    )


def test_a_failed_blocking_check_is_posted_with_its_reasons_and_files(
    lepton_home: Path,
    landing: ArtifactStore,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    frame = digits_frame().head(20)
    bad = frame.with_columns(
        pl.when(pl.int_range(20) < 5).then(99.0).otherwise(pl.col("pixel_03")).alias("pixel_03")
    )
    landing.write_bytes("2025-06-01/good.parquet", parquet_bytes(digits_frame()[20:40]))
    landing.write_bytes("2025-06-01/bad.parquet", parquet_bytes(bad))
    failed = dg.materialize(
        [raw_batches, validated_batches],
        resources=resources,
        instance=instance,
        partition_key="2025-06-01",
        raise_on_error=False,
    )
    assert not failed.success
    alert = alert_posted_for(failed, instance, monkeypatch)["alert"]
    [check] = alert["failed_checks"]
    assert check["asset"] == "validated_batches" and check["check"] == "expectation_suite"
    assert check["rows_per_rule"] == {"expect_column_values_to_be_between(pixel_03)": 5}
    assert check["files"] == {"2025-06-01/bad.parquet": 5}
    assert check["reason"] == (
        "12.5% of rows quarantined > threshold 5.0%; rows per rule "
        "{'expect_column_values_to_be_between(pixel_03)': 5}; files ['2025-06-01/bad.parquet']"
    )
    assert alert["summary"].endswith(
        "check validated_batches:expectation_suite failed: " + check["reason"]
    )


def test_without_a_webhook_the_alert_is_only_logged(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LEPTON_ALERT_WEBHOOK_URL", raising=False)
    assert AlertWebhookResource().post({"summary": "x"}) is False
    monkeypatch.setenv("LEPTON_ALERT_WEBHOOK_URL", "file:///etc/passwd")
    with pytest.raises(ValueError, match=r"LEPTON_ALERT_WEBHOOK_URL is not an http\(s\) URL"):
        AlertWebhookResource().post({"summary": "x"})


def first_partition_in_a_fresh_process(first_day: str) -> subprocess.CompletedProcess[str]:
    code = (
        "from lepton_assets.partitions import daily_partitions_def as p; "
        "print(p.get_first_partition_key())"
    )
    env = {**os.environ, "LEPTON_FIRST_DAY": first_day}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_first_partition_comes_from_the_configuration():
    done = first_partition_in_a_fresh_process("2025-03-01")
    assert done.returncode == 0 and done.stdout.strip() == "2025-03-01"
    done = first_partition_in_a_fresh_process("March 1st")
    assert done.returncode != 0
    assert "LEPTON_FIRST_DAY='March 1st' is not a date (YYYY-MM-DD)" in done.stderr


@dg.asset(retry_policy=dg.RetryPolicy(max_retries=1))
def settings_checked() -> None:
    raise ValueError("1 validation error for TrainingSettings\nepochs\n  Input should be >= 1")


def test_an_alert_after_exhausted_retries_leads_with_the_error_and_keeps_its_field_lines(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    failed = dg.materialize([settings_checked], instance=instance, raise_on_error=False)
    assert not failed.success
    text = alert_posted_for(failed, instance, monkeypatch)["text"]
    assert "Exceeded max_retries" not in text
    assert text.endswith(
        "settings_checked: ValueError: 1 validation error for TrainingSettings | epochs | "
        "Input should be >= 1"
    )


def test_an_alert_for_a_run_whose_worker_died_leads_with_the_run_monitors_reason(
    instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    """The steps of a run whose worker was killed only see their run end; the reason is the
    one run monitoring records."""
    result = dg.materialize([dg.asset(name="short")(lambda: None)], instance=instance)
    run = instance.get_run_by_id(result.run_id)
    assert run is not None
    reason = (
        "Detected run worker status WorkerStatus.FAILED: run worker exited with signal 9 "
        f"(SIGKILL). Marking run {run.run_id} as failed."
    )
    instance.report_run_failed(run, reason)
    text = alert_posted_for(result, instance, monkeypatch)["text"]
    assert text.endswith(f"({run.run_id[:8]}): {reason}")

"""The annotation loop against a real Label Studio on 127.0.0.1: candidates become tasks, an
annotator answers them through Label Studio's API, the sensor lands the answers, and they go
through ingestion, validation and a retrain like any data."""

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import requests

from lepton_assets.cli import main
from lepton_assets.definitions import defs
from lepton_assets.demo import seed_landing
from lepton_core.labeling import LabelStudio, annotation_rows, label_config, task_of
from lepton_core.rows import FAILED_RULES
from lepton_core.spec import DIGITS_SPEC, DatasetSpec
from lepton_core.store import ArtifactStore
from resources.label_studio import LabelStudioResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource
from schedules import sensors

from .conftest import DEMO_END
from .services import ROOT
from .test_s3 import free_port

# One worker runs this module: Label Studio starts once (module fixture).
pytestmark = pytest.mark.xdist_group("label_studio")

START_S = 240  # Label Studio's first start migrates its database: about a minute here


def test_tasks_and_annotations_keep_values_and_escape_the_interface():
    spec = DatasetSpec(name="t", id_column="id", label_column="y", classes=["a<b", 'q"'],
                       feature_columns=["x"], categorical_columns=["c"])  # fmt: skip
    assert '<Choice value="a&lt;b"/><Choice value=\'q"\'/>' in label_config(spec)
    row = {"id": 7, "y": "a<b", "x": 1.5, "c": None, "reason": "likely_mislabeled",
           "score": 0.9, "suggestion": 'q"'}  # fmt: skip
    task = task_of(row, spec, "2026-01-02")
    assert task["data"]["lepton_id"] == "7" and task["data"]["features"] == {"x": 1.5, "c": None}
    assert task["predictions"][0]["result"][0]["value"] == {"choices": ['q"']}
    answered = {"id": 41, "data": task["data"], "annotations": [
        {"id": 5, "result": [{"from_name": "label", "value": {"choices": ["a<b"]}}],
         "completed_by": 1, "created_at": "t0", "updated_at": "t1"},
        {"id": 6, "result": [{"from_name": "label", "value": {"choices": ['q"']}}],
         "completed_by": 2, "created_at": "t2"},
        {"id": 7, "was_cancelled": True, "result": [], "completed_by": 2, "created_at": "t3"},
    ]}  # fmt: skip
    rows, last = annotation_rows([answered], spec, after=4)
    assert last == 6  # the cancelled one does not count
    provenance = {"annotation_task": "41", "annotator": "2", "annotated_at": "t2",
                  "annotation_reason": "likely_mislabeled"}  # fmt: skip
    assert rows.to_dicts() == [{"id": "7", "y": 'q"', "x": 1.5, "c": None, **provenance}]
    assert annotation_rows([answered], spec, after=6)[0].height == 0


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real Label Studio (scripts/label_studio.sh) on a free loopback port: (url, token)."""
    folder = tmp_path_factory.mktemp("label-studio")
    token, port = secrets.token_hex(20), free_port()
    env = {**os.environ, "LEPTON_LABEL_STUDIO_TOKEN": token, "LEPTON_LABEL_STUDIO_PORT": str(port),
           "LEPTON_LABEL_STUDIO_PASSWORD": secrets.token_hex(12),
           "LEPTON_LABEL_STUDIO_DATA": str(folder / "data")}  # fmt: skip
    log = folder / "label-studio.log"
    process = subprocess.Popen([str(ROOT / "scripts" / "label_studio.sh")], env=env, cwd=ROOT,
                               start_new_session=True, stdout=log.open("w"),
                               stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while not up(url):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"not up in {START_S} s: {log.read_text()[-3000:]}"
            time.sleep(2)
        yield url, token
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    assert token not in log.read_text()  # the secret never reaches its log


def up(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def answer(url: str, token: str, task: int, choice: str) -> None:
    """What an annotator's click does: one annotation with one choice."""
    result = [{"from_name": "label", "to_name": "row", "type": "choices",
               "value": {"choices": [choice]}}]  # fmt: skip
    response = requests.post(f"{url}/api/tasks/{task}/annotations", json={"result": result},
                             headers={"Authorization": f"Token {token}"}, timeout=30)  # fmt: skip
    assert response.status_code == 201, response.text


@pytest.mark.slow
def test_annotations_from_label_studio_land_validate_and_retrain(
    label_studio: tuple[str, str],
    lepton_home: Path,
    landing: ArtifactStore,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    url, token = label_studio
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    monkeypatch.setenv("LEPTON_LABEL_STUDIO_URL", url)
    monkeypatch.setenv("LEPTON_LABEL_STUDIO_TOKEN", token)
    # Four demo days; the annotations will land in the last, beside its own file.
    new_day = (DEMO_END + timedelta(days=1)).isoformat()
    seed_landing(landing, days=4, end=DEMO_END + timedelta(days=1))
    assert main(["run"]) == 0
    first = (DEMO_END - timedelta(days=2)).isoformat()
    instance = dg.DagsterInstance.get()

    # Candidates of the first day go out as tasks, once.
    labeling = defs.resolve_job_def("labeling_job")
    result = labeling.execute_in_process(partition_key=first, instance=instance)
    created = result.asset_materializations_for_node("annotation_tasks")[0].metadata
    sent = created["tasks_created"].value
    assert isinstance(sent, int) and sent >= 3
    again = labeling.execute_in_process(partition_key=first, instance=instance)
    repeat = again.asset_materializations_for_node("annotation_tasks")[0].metadata
    assert repeat["tasks_created"].value == 0
    assert repeat["already_sent"].value == sent

    # An annotator answers three tasks: two corrections, one outside the classes.
    client = LabelStudio(url, token)
    tasks = sorted(client.tasks(client.project(DIGITS_SPEC)), key=lambda t: t["id"])
    assert len(tasks) == sent
    picked = tasks[:3]
    labels = [str((int(t["data"]["current_label"]) + 1) % 10) for t in picked[:2]] + ["eleven"]
    for task, label in zip(picked, labels, strict=True):
        answer(url, token, task["id"], label)

    # The sensor lands them as an annotation batch of "today" (the last seeded day here).
    before = landing.list(new_day)
    monkeypatch.setattr(sensors, "landing_day", lambda: new_day)
    resources = {"label_studio": LabelStudioResource(), "landing": LandingZoneResource(),
                 "project": ProjectResource()}  # fmt: skip
    tick = sensors.annotation_sensor(dg.build_sensor_context(instance=instance,
                                                             resources=resources))  # fmt: skip
    assert isinstance(tick, dg.SensorResult) and tick.cursor is not None
    landed = sorted(set(landing.list(new_day)) - set(before))
    assert len(landed) == 1 and landed[0].startswith(f"{new_day}/annotations-")
    batch = landing.read_parquet(landed[0])
    assert batch["label"].to_list() == labels and batch["annotator"].to_list()[0]
    quiet = sensors.annotation_sensor(
        dg.build_sensor_context(instance=instance, resources=resources, cursor=tick.cursor)
    )
    assert isinstance(quiet, dg.SkipReason) and "no annotation finished" in str(quiet.skip_message)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEPTON_LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
        context = dg.build_sensor_context(instance=instance, resources=resources)
        skipped = sensors.annotation_sensor(context)
    assert isinstance(skipped, dg.SkipReason) and "unreachable" in str(skipped.skip_message)
    assert token not in str(skipped.skip_message)
    assert sorted(landing.list(new_day)) == sorted([*before, *landed])  # nothing written twice

    # The batch is data like any other: ingested, validated, quarantined where wrong, and
    # the next dataset version trains on the corrected labels.
    capsys.readouterr()
    code = main(["run"])
    out, err = capsys.readouterr()
    assert code == 0 or "check blessed failed" in err, err
    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    quarantined = store.read_parquet(f"quarantine/{new_day}.parquet")
    assert quarantined["annotation_task"].to_list() == [str(picked[2]["id"])]
    assert "parse(label: Int64)" in quarantined[FAILED_RULES][0].to_list()
    version = store.read_json("current/training_dataset.json")["version"]
    info = store.read_json(f"datasets/{version}/dataset.json")
    assert info["annotations"] == {"rows": 2, "superseded": {first: 2}}
    provenance = store.read_parquet(f"datasets/{version}/annotations.parquet")
    assert sorted(provenance["annotation_task"].to_list()) == [str(t["id"]) for t in picked[:2]]
    # The card of the model trained on it names the annotation batch.
    candidate = store.read_json(
        store.read_json("current/evaluation_report.json")["prefix"] + "/evaluation.json"
    )["candidate_model"]
    assert main(["lineage", candidate]) == 0
    card = capsys.readouterr().out
    assert f"| 1 | passed | `{landing.url(landed[0])}` |" in card, card
    if code == 0:
        assert json.loads(out.splitlines()[-1])["dataset_version"] == version

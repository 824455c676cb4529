"""A user's project: the project file, the factory checked before Horovod, image files."""

import io
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from lepton_assets.definitions import resources
from lepton_assets.ingestion import raw_batches
from lepton_assets.training import trained_model
from lepton_assets.validation import validated_batches
from lepton_core.evaluate import report_html
from lepton_core.images import IMAGE_PIXELS
from lepton_core.keys import quarantine_key, validated_key
from lepton_core.spec import Project
from lepton_core.store import ArtifactStore
from resources.project import ProjectResource

BAD_FACTORY = """
from torch import nn

def three_outputs(info, width=8):
    return nn.Sequential(nn.Flatten(), nn.Linear(info.num_numeric, 3))
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_project_file_with_unknown_or_bad_keys_is_refused_naming_them(tmp_path: Path):
    dataset = (
        "dataset: {name: d, id_column: i, label_column: y, classes: [0, 1], feature_columns: [a]}\n"
    )
    bad = write(tmp_path / "p.yaml", dataset + "modle: {factory: x.y:z}\ntraining: {epoch: 3}\n")
    with pytest.raises(ValueError, match=r"invalid project file .*p.yaml") as refused:
        Project.from_yaml(bad)
    assert "modle\n  Extra inputs are not permitted" in str(refused.value)
    assert "training.epoch\n  Extra inputs are not permitted" in str(refused.value)
    bad_path = write(tmp_path / "q.yaml", dataset + "model: {factory: 'not a path'}\n")
    with pytest.raises(ValueError, match=r"(?s)q.yaml.*model.factory"):
        Project.from_yaml(bad_path)
    regression = write(
        tmp_path / "r.yaml", dataset.replace("classes: [0, 1]", "task: regression, classes: [0, 1]")
    )
    with pytest.raises(
        ValueError, match="classes is required for classification and refused for regression"
    ):
        Project.from_yaml(regression)


def test_dataset_by_path_and_code_path_resolve_against_the_project_file(tmp_path: Path):
    write(
        tmp_path / "specs" / "d.yaml",
        "{name: d, id_column: i, label_column: y, task: regression, feature_columns: [a]}",
    )
    project = Project.from_yaml(
        write(
            tmp_path / "lepton.yaml",
            "dataset: specs/d.yaml\ncode_path: src\ntraining: {epochs: 3}\n",
        )
    )
    assert project.dataset.task == "regression" and project.training.epochs == 3
    assert project.code_path == str(tmp_path / "src")
    assert project.model_ref.factory == "lepton_core.models:mlp"


def test_a_factory_whose_output_does_not_fit_fails_before_horovod_starts(
    tmp_path: Path,
    artifacts: ArtifactStore,
    dataset_version: str,
    instance: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
):
    write(tmp_path / "code" / "bad_models.py", BAD_FACTORY)
    project = write(
        tmp_path / "lepton.yaml",
        "dataset: {name: digits, id_column: sample_id, label_column: label, "
        "classes: [0,1,2,3,4,5,6,7,8,9], feature_prefix: pixel_, feature_count: 64}\n"
        "code_path: code\nmodel: {factory: 'bad_models:three_outputs'}\n",
    )
    monkeypatch.setenv("LEPTON_PROJECT", str(project))
    result = dg.materialize(
        [trained_model],
        resources={**resources, "project": ProjectResource()},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.event_specific_data.error.message  # type: ignore[union-attr]
    assert "model factory 'bad_models:three_outputs': output shape [2, 3] does not fit" in message
    assert "expected [2, 10]" in message
    assert artifacts.list("runs") == []  # no job was written, so no horovodrun was started


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (4, 4), value).save(buf, format="PNG")
    return buf.getvalue()


IMAGE_PROJECT = """
dataset:
  name: pictures
  task: regression
  id_column: id
  label_column: y
  image: {column: path, size: [2, 2], channels: 1}
  quarantine_threshold: 1.0
"""


def test_missing_undecodable_and_unsafe_images_are_quarantined_naming_the_file(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    day = "2026-01-01"
    landing = lepton_home / "landing" / day
    (landing / "img").mkdir(parents=True)
    (landing / "img" / "ok.png").write_bytes(png(200))
    (landing / "img" / "broken.png").write_bytes(b"\x89PNG not really")
    (lepton_home / "secret.png").write_bytes(png(1))
    pl.DataFrame(
        {
            "id": ["a", "b", "c", "d"],
            "y": [1.0, 2.0, 3.0, 4.0],
            "path": ["img/ok.png", "img/broken.png", "img/gone.png", "../../secret.png"],
        }
    ).write_csv(landing / "labels.csv")
    project = write(tmp_path / "lepton.yaml", IMAGE_PROJECT)
    monkeypatch.setenv("LEPTON_PROJECT", str(project))
    result = dg.materialize(
        [raw_batches, validated_batches],
        resources={**resources, "project": ProjectResource()},
        instance=instance,
        partition_key=day,
    )
    assert result.success
    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    clean = store.read_parquet(validated_key(day))
    assert clean["id"].to_list() == ["a"]
    assert clean[IMAGE_PIXELS].to_list() == [bytes([200] * 4)]
    rules = dict(store.read_parquet(quarantine_key(day)).select("id", "_failed_rules").iter_rows())
    assert rules["b"][0].startswith("image(path): img/broken.png: undecodable image")
    assert rules["c"] == ["image(path): missing file img/gone.png"]
    assert rules["d"] == [
        "image(path): ../../secret.png: unsafe path (relative, letters, digits, '.', '_', '-' only)"
    ]


MARKUP_PROJECT = """
dataset:
  name: markup
  id_column: id
  label_column: y
  classes: [0, 1]
  feature_columns: [x]
  categorical_columns: [note]
  extra_expectations:
    - {type: expect_column_values_to_be_in_set, kwargs: {column: note, value_set: [plain]}}
"""


def test_markup_in_landed_values_is_escaped_on_the_data_docs_page(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    day = "2026-01-01"
    landing = lepton_home / "landing" / day
    landing.mkdir(parents=True)
    script = "<script>alert('x')</script>"
    pl.DataFrame(
        {
            "id": [script, script, "ok"],
            "y": [0, 1, 0],
            "x": [1.0, 2.0, 3.0],
            "note": ["<b>bold</b>", "plain", "<img src=x onerror=alert(1)>"],
        }
    ).write_csv(landing / "rows.csv")
    project = write(tmp_path / "lepton.yaml", MARKUP_PROJECT)
    monkeypatch.setenv("LEPTON_PROJECT", str(project))
    dg.materialize(
        [raw_batches, validated_batches],
        resources={**resources, "project": ProjectResource()},
        instance=instance,
        partition_key=day,
        raise_on_error=False,
    )
    store = ArtifactStore(f"file://{lepton_home / 'artifacts'}")
    page = store.read_text(f"validation/{day}.html")
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<b>bold</b>" not in page and "<img src=x" not in page and "<script>alert" not in page
    # The stored result keeps the values as they landed.
    assert "<b>bold</b>" in store.read_text(f"validation/{day}.json")


def test_markup_from_data_and_user_code_is_escaped_in_the_evaluation_report():
    script = "<script>alert('x')</script>"
    markdown = "\n".join(
        [
            f"# Evaluation of `{script}`",
            "| class | F1 |",
            "|---|---|",
            "| <img src=x onerror=alert(1)> | 0.5 |",
            f"- skipped: {script}",
            "<b>plain paragraph</b> and **bold**",
        ]
    )
    page = report_html(markdown, {}, title=script)
    assert "<script>" not in page and "<img src=x" not in page and "<b>" not in page
    assert "<code>&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;</code>" in page
    assert "<td>&lt;img src=x onerror=alert(1)&gt;</td>" in page
    assert "&lt;b&gt;plain paragraph&lt;/b&gt; and <strong>bold</strong>" in page


def test_a_bad_run_config_fails_the_first_step_naming_the_fields_and_is_not_retried(
    lepton_home: Path, instance: dg.DagsterInstance
):
    """Values Dagster's schema lets through but the settings refuse stop the training job in
    its first step, before any dataset is built or the training slot is taken."""
    from lepton_assets.definitions import defs

    result = defs.resolve_job_def("training_job").execute_in_process(
        instance=instance,
        run_config={
            "ops": {
                "trained_model": {"config": {"epochs": 0, "amp": "foo"}},
                "evaluation_report": {"config": {"min_accuracy": 2.0}},
            }
        },
        raise_on_error=False,
    )
    assert not result.success
    failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert [e.step_key for e in failures] == ["training_dataset"]
    message = failures[0].step_failure_data.error.message  # type: ignore[union-attr]
    assert (
        "invalid run config: trained_model.epochs: Input should be greater than or equal to 1 "
        "(got 0)" in message
    )
    assert "trained_model.amp: Input should be 'bf16', 'fp16' or 'off' (got 'foo')" in message
    assert "evaluation_report.min_accuracy: Input should be less than or equal to 1" in message
    retries = [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    assert retries == [] and not ArtifactStore(f"file://{lepton_home / 'artifacts'}").exists(
        "current/training_dataset.json"
    )

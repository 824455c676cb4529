"""Distillation: which student, the loss (pinned values), and a student trained by the
Horovod worker from a trained teacher, against the same student trained alone."""

import math

import dagster as dg
import horovod.torch as hvd
import pytest
import torch

from lepton_assets.compression import compressed_model
from lepton_assets.definitions import resources
from lepton_core.compress import parameter_count
from lepton_core.distill import DistillationLoss, student_job, student_ref
from lepton_core.keys import current_key
from lepton_core.models import load_model
from lepton_core.spec import CompressionSettings, TrainingSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import TASKS
from lepton_core.train_worker import train

from .conftest import digits_model_info
from .test_train_worker import job


@pytest.fixture(scope="module", autouse=True)
def horovod_single_process():
    hvd.init()
    yield
    hvd.shutdown()


def test_the_student_is_narrowed_to_a_quarter_of_the_teachers_parameters_or_is_the_one_named():
    quarter = CompressionSettings()
    mlp = digits_model_info("mlp")  # 256/128 wide: 50,826 parameters
    assert student_ref(mlp, quarter, 50_826).kwargs == {"widths": [64, 32]}  # 6,570
    # Against a teacher of 20,000 parameters a quarter of the widths is too many: halved.
    assert student_ref(mlp, quarter, 20_000).kwargs == {"widths": [32, 16]}  # 2,778
    cnn = digits_model_info("cnn", widths=[16, 32, 64])
    assert student_ref(cnn, quarter, 38_282).kwargs == {"widths": [4, 8, 16]}  # 2,570
    user = {**digits_model_info("cnn"), "factory": "my_models:big", "kwargs": {"depth": 9}}
    ref = student_ref(user, quarter, 151_306)  # digits are 1x8x8 images: the built-in cnn
    assert (ref.factory, ref.kwargs) == ("lepton_core.models:cnn", {"widths": [8, 16, 32]})
    named = CompressionSettings(student_factory="my_models:small", student_kwargs={"k": 1})
    expected = {"factory": "my_models:small", "kwargs": {"k": 1}}
    assert student_ref(user, named, 151_306).model_dump() == expected


def test_the_loss_mixes_the_softened_teacher_with_the_labels():
    task = TASKS["classification"]
    student, teacher = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])
    label = torch.tensor([0])
    # KL(teacher ‖ student) at T = 1: teacher (0.75, 0.25) against student (0.5, 0.5).
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    only_soft = DistillationLoss(task, task.default_loss, temperature=1.0, weight=1.0)
    assert float(only_soft(student, label, teacher)) == pytest.approx(kl, abs=1e-6)
    assert kl == pytest.approx(0.130812, abs=1e-6)
    # At T = 2 the teacher is softened to softmax(ln 3 / 2, 0) and the term scaled by T².
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    at_2 = DistillationLoss(task, task.default_loss, temperature=2.0, weight=1.0)
    assert float(at_2(student, label, teacher)) == pytest.approx(4 * kl2, abs=1e-6)
    mixed = DistillationLoss(task, task.default_loss, temperature=1.0, weight=0.25)
    hard = math.log(2)  # cross-entropy of (0.5, 0.5) against class 0
    assert float(mixed(student, label, teacher)) == pytest.approx(0.25 * kl + 0.75 * hard)
    regression = TASKS["regression"]
    plain = DistillationLoss(regression, regression.default_loss, temperature=4.0, weight=0.5)
    value = plain(torch.tensor([[1.0]]), torch.tensor([3.0]), torch.tensor([[2.0]]))
    assert float(value) == pytest.approx(0.5 * 1.0 + 0.5 * 4.0)


def test_a_student_trained_by_the_worker_learns_from_its_teacher(
    artifacts: ArtifactStore, dataset_version: str
):
    train(artifacts, job(artifacts, dataset_version, epochs=4), None)  # the cnn teacher
    teacher, _ = load_model(artifacts, "models/test")
    settings = CompressionSettings(distill_epochs=4)
    training = TrainingSettings(batch_size=32, patience=0)
    student = student_job(artifacts, "models/test", settings, training, "students/test")
    assert student["distill"] == {"teacher": "models/test", "temperature": 4.0, "weight": 0.7}
    assert student["model_info"]["kwargs"] == {"widths": [8, 16, 32]}
    train(artifacts, student, None)
    taught, taught_info = load_model(artifacts, "students/test")
    assert taught_info["factory"] == "lepton_core.models:cnn"
    assert parameter_count(taught) < parameter_count(teacher) / 10
    history = artifacts.read_json("students/test/history.json")
    assert len(history) == 4 and history[-1]["val_accuracy"] > 0.9


def test_a_student_that_cannot_be_built_is_skipped_with_its_reason(
    artifacts: ArtifactStore, dataset_version: str, instance
):
    train(artifacts, job(artifacts, dataset_version, arch="mlp", epochs=1), None)
    artifacts.write_json(current_key("trained_model"), {"prefix": "models/test"})
    settings = {
        "distill_epochs": 1,
        "student_factory": "no_such_module:build",
        "finetune_epochs": 0,
    }
    config = {"ops": {"compressed_model": {"config": settings}}}
    result = dg.materialize(
        [compressed_model], resources=resources, instance=instance, run_config=config
    )
    assert result.success
    variants = artifacts.read_json("compressed/test/variants.json")
    reasons = {s["variant"]: s["reason"] for s in variants["skipped"]}
    assert reasons["distilled"].startswith("the student cannot be built: ")
    assert "no_such" in reasons["distilled"]
    assert "distilled" not in {r["variant"] for r in variants["built"]}

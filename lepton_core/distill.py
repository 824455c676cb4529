"""Knowledge distillation: a smaller student trained on a teacher's outputs and the labels.

Hinton, Vinyals and Dean (2015): for a classification the student's loss is
``weight · T² · KL(softmax(teacher / T) ‖ softmax(student / T)) + (1 − weight) · task loss``,
with temperature ``T`` softening both; for a regression the teacher's predictions stand in
for the softened outputs (``weight · MSE(student, teacher) + (1 − weight) · task loss``). The
student is trained by the same Horovod worker as any model (``train_worker``, with the job's
``distill`` section naming the teacher) and becomes the ``distilled`` compression variant.
"""

import math
from typing import Any

import torch
from torch.nn import functional

from lepton_core.models import (
    BUILTIN,
    DEFAULT_WIDTHS,
    build_model,
    load_model,
    parameter_count,
)
from lepton_core.spec import (
    CompressionSettings,
    DatasetSpec,
    ModelRef,
    TrainingSettings,
    default_factory,
    worker_job,
)
from lepton_core.store import ArtifactStore
from lepton_core.tasks import Loss, Task


def student_ref(
    teacher: dict[str, Any], settings: CompressionSettings, teacher_parameters: int
) -> ModelRef:
    """The student's factory and kwargs: the one named in the settings, else the teacher's
    built-in network (or, for a user's teacher, the built-in one for the inputs) with its
    widths (or the defaults) scaled by ``student_width``, and halved again until the student
    has at most ``student_width`` of the teacher's parameters (or every width is 1)."""
    if settings.student_factory:
        return ModelRef(factory=settings.student_factory, kwargs=settings.student_kwargs)
    factory = teacher["factory"]
    if not factory.startswith(BUILTIN) or factory.removeprefix(BUILTIN) not in DEFAULT_WIDTHS:
        factory = default_factory(DatasetSpec.model_validate(teacher["spec"]))
    kwargs = teacher.get("kwargs", {}) if factory == teacher["factory"] else {}
    full = kwargs.get("widths") or DEFAULT_WIDTHS[factory.removeprefix(BUILTIN)]
    share = settings.student_width
    while True:
        widths = [max(1, math.ceil(w * share)) for w in full]
        ref = ModelRef(factory=factory, kwargs={**kwargs, "widths": widths})
        built = build_model({**teacher, "factory": ref.factory, "kwargs": ref.kwargs})
        small = parameter_count(built) <= settings.student_width * teacher_parameters
        if small or max(widths) == 1:
            return ref
        share /= 2


def student_description(
    teacher: dict[str, Any], settings: CompressionSettings, teacher_parameters: int
) -> dict[str, Any]:
    """The teacher's model description with the student's factory and kwargs."""
    ref = student_ref(teacher, settings, teacher_parameters)
    keep = {k: v for k, v in teacher.items() if k not in ("variant", "dtype", "sha256", "tuned")}
    return {**keep, "factory": ref.factory, "kwargs": ref.kwargs}


class DistillationLoss:
    """The student's loss given its outputs, the target and the teacher's outputs."""

    def __init__(self, task: Task, task_loss: Loss, temperature: float, weight: float) -> None:
        self.task, self.task_loss = task, task_loss
        self.temperature, self.weight = temperature, weight

    def __call__(
        self, student: torch.Tensor, target: torch.Tensor, teacher: torch.Tensor
    ) -> torch.Tensor:
        hard = self.task_loss(student, target)
        if self.task.name == "classification":
            t = self.temperature
            soft = functional.kl_div(
                functional.log_softmax(student / t, dim=1),
                functional.log_softmax(teacher / t, dim=1),
                reduction="batchmean",
                log_target=True,
            ) * (t * t)
        else:
            soft = functional.mse_loss(student, teacher)
        return self.weight * soft + (1 - self.weight) * hard


def student_job(
    store: ArtifactStore,
    teacher_prefix: str,
    settings: CompressionSettings,
    training: TrainingSettings,
    prefix: str,
) -> dict[str, Any]:
    """The worker job that trains the student: the project's training settings for
    ``distill_epochs`` epochs, the teacher and the loss's temperature and weight."""
    model, teacher = load_model(store, teacher_prefix)
    distill = {
        "teacher": teacher_prefix,
        "temperature": settings.distill_temperature,
        "weight": settings.distill_weight,
    }
    return worker_job(
        training.model_copy(update={"epochs": settings.distill_epochs}),
        student_description(teacher, settings, parameter_count(model)),
        prefix,
        distill=distill,
    )

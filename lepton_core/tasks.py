"""What differs between classification and regression, in one place.

Each task names its default loss, the validation metric that training reports and
compression judges variants by, and the output shape a model must produce.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def regression_outputs(outputs: torch.Tensor) -> torch.Tensor:
    """[B] or [B, 1] predictions as [B]."""
    return outputs.reshape(outputs.shape[0])


def mse(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(regression_outputs(outputs), target)


def cross_entropy(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, target)


@dataclass(frozen=True)
class Task:
    name: str
    default_loss: Loss
    metric: str  # the validation metric in training history and variant choice
    higher_is_better: bool

    def metric_sums(self, outputs: torch.Tensor, target: torch.Tensor) -> float:
        """The metric's additive part over a batch: correct answers, or squared error."""
        if self.name == "classification":
            return float((outputs.argmax(1) == target).sum())
        return float(((regression_outputs(outputs) - target) ** 2).sum())

    def metric_value(self, total: float, count: float) -> float:
        return total / count if self.name == "classification" else (total / count) ** 0.5

    def expected_shape(self, batch: int, num_outputs: int) -> list[list[int]]:
        if self.name == "classification":
            return [[batch, num_outputs]]
        return [[batch], [batch, 1]]


TASKS = {
    "classification": Task("classification", cross_entropy, "val_accuracy", True),
    "regression": Task("regression", mse, "val_rmse", False),
}


def task_of(name: str) -> Task:
    return TASKS[name]

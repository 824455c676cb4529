"""What differs between classification and regression, in one place.

Each task names its default loss, the validation metric that training reports and
compression judges variants by, and the output shape a model must produce.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def significant(value: float, digits: int = 5) -> float:
    """``value`` to ``digits`` significant digits: a metric in the target's unit keeps its
    precision whether the target is in thousandths or in millions (rounding to decimals
    would turn an RMSE of 0.000152 into 0.00015, or to 0.0)."""
    return float(f"{value:.{digits}g}")


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

    def metric_value(self, total: float, count: float, unit: float = 1.0) -> float:
        """Accuracy, or RMSE in the target's unit: ``unit`` is the standard deviation the
        target was scaled by for training (``data.target_scaling``)."""
        if self.name == "classification":
            return total / count
        return (total / count) ** 0.5 * unit

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

"""The model zoo, and saving/loading models safely.

Every model takes the flat feature vector of a row (the spec's feature columns, in order),
standardizes it with statistics from the training split (stored as buffers, so a saved model
is self-contained) and returns class logits.

Models are stored as two artifacts: ``<prefix>/model.pt`` (a state dict only) and
``<prefix>/model.json`` (architecture, shapes, classes, variant). Loading rebuilds the module
from the JSON and reads the state dict with ``torch.load(..., weights_only=True)``: a crafted
checkpoint can never execute code.
"""

import io
import math
import warnings
from typing import Any

import torch
from torch import nn

from resources.artifact_store import ArtifactStore

ARCHITECTURES = ("mlp", "cnn", "resnet")


class Standardize(nn.Module):
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    """ResNet's two-conv residual block, with a 1x1 projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class Reshape(nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


def build_model(
    arch: str, num_features: int, num_classes: int, input_shape: list[int] | None = None
) -> nn.Sequential:
    """A fresh model: ``mlp`` (any input), ``cnn`` (small images such as 1×8×8 digits) or
    ``resnet`` (a ResNet-style net for images such as 3×32×32); the last two need C×H×W."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if input_shape is not None and math.prod(input_shape) != num_features:
        raise ValueError(f"input shape {input_shape} does not hold {num_features} features")
    if arch == "mlp":
        body: list[nn.Module] = [
            nn.Linear(num_features, 256),
            nn.ReLU(),
            nn.Linear(256, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        ]
        return nn.Sequential(Standardize(num_features), *body)
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"{arch} needs a [channels, height, width] input shape, got {input_shape}")
    channels, height, width = input_shape
    if arch == "cnn":
        body = [
            Reshape(input_shape),
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64 * (height // 2) * (width // 2), 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        ]
    else:  # resnet
        body = [
            Reshape(input_shape),
            nn.Conv2d(channels, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            BasicBlock(32, 32, 1),
            BasicBlock(32, 64, 2),
            BasicBlock(64, 128, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(128, num_classes),
        ]
    return nn.Sequential(Standardize(num_features), *body)


def set_standardization(model: nn.Sequential, mean: list[float], std: list[float]) -> None:
    """Store the training split's feature statistics in the model's first layer."""
    standardize = model[0]
    if not isinstance(standardize, Standardize):
        raise TypeError(f"first layer is {type(standardize).__name__}, not Standardize")
    standardize.mean.copy_(torch.tensor(mean))
    standardize.std.copy_(torch.tensor(std))


def default_arch(input_shape: list[int] | None) -> str:
    if input_shape is None or len(input_shape) != 3:
        return "mlp"
    return "resnet" if input_shape[0] == 3 else "cnn"


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 weights for every Linear layer, activations quantized on the fly.

    torch.ao's eager dynamic quantization is deprecated in favour of torchao, but on CPU it
    was about 1.8x faster than fp32 on Linear layers while torchao's int8 paths were slower
    than fp32 in eager mode (DESIGN.md, measured here), and its state dict loads with
    ``weights_only=True``. The deprecation warning is expected, so it is silenced here only.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def model_bytes(model: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def save_model(store: ArtifactStore, prefix: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Write ``<prefix>/model.pt`` and ``<prefix>/model.json``; returns the weights' sha256."""
    digest = store.write_bytes(f"{prefix}/model.pt", model_bytes(model))
    store.write_json(f"{prefix}/model.json", {**info, "sha256": digest})
    return digest


def restore_model(info: dict[str, Any], weights: bytes) -> nn.Module:
    """Rebuild a model from its JSON description and state-dict bytes, loading weights only."""
    model = build_model(
        info["arch"], info["num_features"], info["num_classes"], info.get("input_shape")
    )
    dtype = info.get("dtype", "float32")
    if info.get("quantization") == "int8_dynamic":
        model = quantize_dynamic_int8(model)
    elif dtype != "float32":
        model = model.to(getattr(torch, dtype))
    with warnings.catch_warnings():
        # Quantized state dicts go through TypedStorage inside torch itself.
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


def load_model(store: ArtifactStore, prefix: str) -> tuple[nn.Module, dict[str, Any]]:
    info = store.read_json(f"{prefix}/model.json")
    weights = store.read_bytes(f"{prefix}/model.pt")
    return restore_model(info, weights), info


@torch.no_grad()
def predict_logits(
    model: nn.Module, features: torch.Tensor, batch_size: int = 1024
) -> torch.Tensor:
    """Logits in float32 for a float32 feature matrix, whatever the model's dtype."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    outputs = [
        model(features[i : i + batch_size].to(dtype)).float()
        for i in range(0, features.shape[0], batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)

"""The model zoo, and saving/loading models safely.

Every model takes the flat feature vector of a row (the spec's feature columns, in order),
standardizes it with statistics from the training split (stored as buffers, so a saved model
is self-contained) and returns class logits.

Models are stored as two artifacts: ``<prefix>/model.pt`` (a state dict only) and
``<prefix>/model.json`` (architecture, shapes, classes, variant). Loading rebuilds the module
from the JSON and reads the state dict with ``torch.load(..., weights_only=True)``: a crafted
checkpoint can never execute code.
"""

import contextlib
import io
import math
import warnings
from collections.abc import Iterator
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


DEFAULT_WIDTHS = {"mlp": [256, 128], "cnn": [32, 64, 128]}


def build_model(
    arch: str,
    num_features: int,
    num_classes: int,
    input_shape: list[int] | None = None,
    widths: list[int] | None = None,
) -> nn.Sequential:
    """A fresh model: ``mlp`` (any input), ``cnn`` (small images such as 1×8×8 digits) or
    ``resnet`` (a ResNet-style net for images such as 3×32×32); the last two need C×H×W.

    ``widths`` are the hidden sizes of ``mlp`` (two Linear layers) and ``cnn`` (two conv
    layers' channels, then the Linear layer): structured pruning saves narrower ones.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {ARCHITECTURES}")
    if input_shape is not None and math.prod(input_shape) != num_features:
        raise ValueError(f"input shape {input_shape} does not hold {num_features} features")
    w = widths or DEFAULT_WIDTHS.get(arch, [])
    if arch == "mlp":
        body: list[nn.Module] = [
            nn.Linear(num_features, w[0]),
            nn.ReLU(),
            nn.Linear(w[0], w[1]),
            nn.ReLU(),
            nn.Linear(w[1], num_classes),
        ]
        return nn.Sequential(Standardize(num_features), *body)
    if input_shape is None or len(input_shape) != 3:
        raise ValueError(f"{arch} needs a [channels, height, width] input shape, got {input_shape}")
    channels, height, width = input_shape
    if arch == "cnn":
        body = [
            Reshape(input_shape),
            nn.Conv2d(channels, w[0], 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(w[0], w[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(w[1] * (height // 2) * (width // 2), w[2]),
            nn.ReLU(),
            nn.Linear(w[2], num_classes),
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


# int8 backend: torch.ao, chosen by measurement on this CPU (x86; bench/compression_bench.py).
# It is deprecated in favour of torchao, but on a 2048x2048 MLP, one thread, median ms at
# batch 1 / 256: fp32 0.90 / 25.8, torch.ao dynamic int8 0.10 / 3.9, torchao int8
# dynamic-activation 2.67 / 8.5, torchao int8 weight-only 1.77 / 55.7. Static torch.ao int8
# (FX graph mode, calibrated) made the digits CNN ~7x faster at batch 256 at 0.27x the size.
# Both save state dicts that load with weights_only=True, rebuilt by the same calls.
# The deprecation warnings are expected and silenced around these calls only.
_TORCH_AO_WARNINGS = (
    ".*torch.ao.quantization is deprecated.*",
    ".*quantized tensor creation functions.*",
    ".*TypedStorage is deprecated.*",
    ".*must run observer before calling calculate_qparams.*",
    ".*reduce_range will be deprecated.*",
)


@contextlib.contextmanager
def _torch_ao() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _TORCH_AO_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        yield


def quantize_dynamic_int8(model: nn.Module) -> nn.Module:
    """int8 weights for every Linear layer, activations quantized on the fly (no calibration)."""
    with _torch_ao():
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


def quantize_static_int8(
    model: nn.Module, calibration: torch.Tensor | None, num_features: int
) -> nn.Module:
    """int8 weights and activations for conv and Linear layers (FX graph mode), with ranges
    calibrated on ``calibration`` rows (the validation split); None only builds the structure
    that a saved state dict is loaded into."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with _torch_ao():
        example = (torch.zeros(1, num_features),)
        prepared = prepare_fx(model.eval(), get_default_qconfig_mapping("x86"), example)
        if calibration is not None:
            with torch.no_grad():
                for i in range(0, calibration.shape[0], 256):
                    prepared(calibration[i : i + 256])
        return convert_fx(prepared)


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into bytes (state dicts and checkpoints: tensors and plain values)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_bytes(model: nn.Module) -> bytes:
    return torch_bytes(model.state_dict())


def save_model(store: ArtifactStore, prefix: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Write ``<prefix>/model.pt`` and ``<prefix>/model.json``; returns the weights' sha256."""
    digest = store.write_bytes(f"{prefix}/model.pt", model_bytes(model))
    store.write_json(f"{prefix}/model.json", {**info, "sha256": digest})
    return digest


def restore_model(info: dict[str, Any], weights: bytes) -> nn.Module:
    """Rebuild a model from its JSON description and state-dict bytes, loading weights only."""
    model: nn.Module = build_model(
        info["arch"],
        info["num_features"],
        info["num_classes"],
        info.get("input_shape"),
        info.get("widths"),
    )
    dtype = info.get("dtype", "float32")
    quantization = info.get("quantization")
    if quantization == "int8_dynamic":
        model = quantize_dynamic_int8(model)
    elif quantization == "int8_static":
        model = quantize_static_int8(model, None, info["num_features"])
    elif quantization is not None:
        raise ValueError(f"unknown quantization {quantization!r}")
    elif dtype != "float32":
        model = model.to(getattr(torch, dtype))
    with _torch_ao():  # quantized state dicts go through TypedStorage inside torch itself
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

"""Models: the built-in factories, the wrapper every model is trained in, safe save/load.

A model comes from a factory, ``"package.module:function"``, called as
``factory(info: DatasetInfo, **kwargs) -> torch.nn.Module``; its ``forward`` takes one tensor
per input in ``info.inputs`` order (see ``data.py``) and returns [B, classes] logits or [B]
(or [B, 1]) regression values. The built-in networks ``mlp``, ``cnn`` and ``resnet`` below
are factories like any other.

Lepton wraps the factory's module in ``LeptonModel``, whose ``Preprocess`` fills nulls and
standardizes numeric inputs with the train split's statistics (buffers, so a saved model is
self-contained). Models are stored as two artifacts: ``<prefix>/model.pt`` (a state dict
only) and ``<prefix>/model.json`` (factory, kwargs, dataset description, preprocessing,
variant). Loading calls the factory again and reads the state dict with
``torch.load(..., weights_only=True)``: a crafted checkpoint can never execute code, and no
module is ever pickled.
"""

import contextlib
import io
import json
import math
import warnings
from collections.abc import Iterator
from typing import Any

import polars as pl
import torch
from torch import nn

from lepton_core.data import (
    DatasetInfo,
    dataset_description,
    dummy_inputs,
    encode_inputs,
    unscale_target,
)
from lepton_core.spec import DatasetSpec, Project
from lepton_core.store import ArtifactStore, sha256_bytes
from lepton_core.tasks import task_of
from lepton_core.usercode import UserCodeError, code_digest, resolve

BUILTIN = "lepton_core.models:"
DEFAULT_WIDTHS = {"mlp": [256, 128], "cnn": [32, 64, 128]}


class Preprocess(nn.Module):
    """Numeric inputs: NaN (null) -> the train split's fill value, then standardized."""

    fill: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("fill", torch.zeros(num_features))
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.where(torch.isnan(x), self.fill.to(x.dtype), x)
        return (x - self.mean) / self.std


class LeptonModel(nn.Module):
    """The user's (or a built-in) module behind the stored preprocessing."""

    def __init__(self, body: nn.Module, info: DatasetInfo) -> None:
        super().__init__()
        self.preprocess = Preprocess(info.num_numeric)
        self.body = body
        self.info = info
        self.numeric_first = "numeric" in info.inputs

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.numeric_first:
            inputs = (self.preprocess(inputs[0]), *inputs[1:])
        return self.body(*inputs)


def set_preprocessing(model: LeptonModel, preprocessing: dict[str, Any]) -> None:
    numeric = preprocessing["numeric"]
    for name in ("fill", "mean", "std"):
        getattr(model.preprocess, name).copy_(torch.tensor(numeric[name]))


# -- built-in factories ----------------------------------------------------------------------
class Reshape(nn.Module):
    def __init__(self, shape: list[int]) -> None:
        super().__init__()
        self.shape = list(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)


class TabularBody(nn.Module):
    """Numeric features, an embedding per categorical column and flattened pixels, joined
    and fed to a stack of Linear layers."""

    def __init__(self, info: DatasetInfo, layers: nn.Sequential, embedding_dims: list[int]):
        super().__init__()
        self.inputs = list(info.inputs)
        self.embeddings = nn.ModuleList(
            nn.Embedding(n, d)
            for n, d in zip(info.categorical_cardinalities, embedding_dims, strict=True)
        )
        self.layers = layers

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        parts = []
        for name, x in zip(self.inputs, inputs, strict=True):
            if name == "categorical":
                parts += [emb(x[:, i]) for i, emb in enumerate(self.embeddings)]
            else:
                parts.append(x.flatten(1))
        return self.layers(torch.cat(parts, 1) if len(parts) > 1 else parts[0])


def embedding_dim(cardinality: int) -> int:
    return min(16, (cardinality + 1) // 2 + 1)


def mlp(info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
    """Two hidden Linear layers over every input (categorical columns embedded)."""
    w = widths or DEFAULT_WIDTHS["mlp"]
    dims = [embedding_dim(n) for n in info.categorical_cardinalities]
    width = info.num_numeric + sum(dims) + math.prod(info.image_shape or [0])
    layers = nn.Sequential(
        nn.Linear(width, w[0]),
        nn.ReLU(),
        nn.Linear(w[0], w[1]),
        nn.ReLU(),
        nn.Linear(w[1], info.num_outputs),
    )
    return TabularBody(info, layers, dims)


def image_shape(info: DatasetInfo, arch: str) -> list[int]:
    """C×H×W of the one image input (an image column, or numeric features with a 3-d shape)."""
    shape = info.image_shape or info.numeric_shape
    if len(info.inputs) != 1 or shape is None or len(shape) != 3:
        raise ValueError(
            f"{arch} takes one image input ([channels, height, width]); this dataset has "
            f"inputs {info.inputs} (numeric shape {info.numeric_shape})"
        )
    return list(shape)


def cnn(info: DatasetInfo, widths: list[int] | None = None) -> nn.Module:
    """Two 3×3 conv layers, a 2×2 max-pool and two Linear layers: small images."""
    channels, height, width = image_shape(info, "cnn")
    w = widths or DEFAULT_WIDTHS["cnn"]
    return nn.Sequential(
        Reshape([channels, height, width]),
        nn.Conv2d(channels, w[0], 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(w[0], w[1], 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(w[1] * (height // 2) * (width // 2), w[2]),
        nn.ReLU(),
        nn.Linear(w[2], info.num_outputs),
    )


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


def resnet(info: DatasetInfo) -> nn.Module:
    """A ResNet-style net for images such as 3×32×32."""
    shape = image_shape(info, "resnet")
    return nn.Sequential(
        Reshape(shape),
        nn.Conv2d(shape[0], 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        BasicBlock(32, 32, 1),
        BasicBlock(32, 64, 2),
        BasicBlock(64, 128, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, info.num_outputs),
    )


def model_description(project: Project, dataset: dict[str, Any]) -> dict[str, Any]:
    """What a saved model records to be rebuilt: factory, kwargs, code path, loss, the
    dataset's description, spec and preprocessing."""
    spec = DatasetSpec.model_validate(dataset["spec"])
    ref = project.model_ref
    return {
        "factory": ref.factory,
        "kwargs": ref.kwargs,
        "code_path": project.code_path,
        "code_digest": code_digest(ref.factory, project.code_path),
        "loss": project.loss,
        "dataset_version": dataset["version"],
        "dataset_info": dataset_description(spec, dataset["preprocessing"]).model_dump(),
        "spec": dataset["spec"],
        "preprocessing": dataset["preprocessing"],
    }


# -- building and checking a model from its description -------------------------------------
def build_model(info: dict[str, Any]) -> LeptonModel:
    """A fresh model from a description: ``factory``, ``kwargs``, ``code_path``,
    ``dataset_info`` and ``preprocessing``. Checks the contract and names the factory."""
    factory = info["factory"]
    data = DatasetInfo.model_validate(info["dataset_info"])
    build = resolve(factory, info.get("code_path"), what="model factory")
    try:
        body = build(data, **info.get("kwargs", {}))
    except TypeError as exc:
        raise UserCodeError(f"model factory {factory!r}: {exc}") from exc
    if not isinstance(body, nn.Module):
        raise UserCodeError(
            f"model factory {factory!r} returned {type(body).__name__}, not a torch.nn.Module"
        )
    model = LeptonModel(body, data)
    set_preprocessing(model, info["preprocessing"])
    return model


def check_outputs(model: nn.Module, info: dict[str, Any]) -> None:
    """Run a dummy batch; the output shape must fit the task (named in the error)."""
    data = DatasetInfo.model_validate(info["dataset_info"])
    batch = 2
    model.eval()
    with torch.no_grad():
        try:
            out = model(*dummy_inputs(data, batch))
        except Exception as exc:  # any failure of user code is reported with its factory
            raise UserCodeError(
                f"model factory {info['factory']!r}: forward on inputs {data.inputs} failed: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
    expected = task_of(data.task).expected_shape(batch, data.num_outputs)
    seen = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if seen not in expected:
        raise UserCodeError(
            f"model factory {info['factory']!r}: output shape {seen} does not fit the "
            f"{data.task} task; expected {' or '.join(map(str, expected))} for a batch of {batch}"
        )


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


def quantize_static_int8(model: LeptonModel, calibration: list[torch.Tensor] | None) -> LeptonModel:
    """int8 weights and activations for the body's conv and Linear layers (FX graph mode),
    ranges calibrated on ``calibration`` inputs (the validation split); None only builds the
    structure that a saved state dict is loaded into. The body must be traceable by FX and
    take float inputs; the preprocessing stays in float."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with _torch_ao():
        example = tuple(dummy_inputs(model.info, 1))
        model.body = prepare_fx(model.body.eval(), get_default_qconfig_mapping("x86"), example)
        if calibration is not None:
            with torch.no_grad():
                for i in range(0, calibration[0].shape[0], 256):
                    model(*(x[i : i + 256] for x in calibration))
        model.body = convert_fx(model.body)
    return model.eval()


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into bytes (state dicts and checkpoints: tensors and plain values)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def model_bytes(model: nn.Module) -> bytes:
    return torch_bytes(model.state_dict())


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(store: ArtifactStore, prefix: str, model: nn.Module, info: dict[str, Any]) -> str:
    """Write ``<prefix>/model.pt`` and ``<prefix>/model.json``; returns the weights' sha256."""
    digest = store.write_bytes(f"{prefix}/model.pt", model_bytes(model))
    store.write_json(f"{prefix}/model.json", {**info, "sha256": digest})
    return digest


def restore_model(info: dict[str, Any], weights: bytes) -> nn.Module:
    """Rebuild a model from its description and state-dict bytes, loading weights only."""
    model: nn.Module = build_model(info)
    dtype = info.get("dtype", "float32")
    quantization = info.get("quantization")
    if quantization == "int8_dynamic":
        model = quantize_dynamic_int8(model)
    elif quantization == "int8_static":
        model = quantize_static_int8(build_model(info), None)
    elif quantization is not None:
        raise ValueError(f"unknown quantization {quantization!r}")
    elif dtype != "float32":
        model = model.to(getattr(torch, dtype))
    with _torch_ao():  # quantized state dicts go through TypedStorage inside torch itself
        state = torch.load(io.BytesIO(weights), weights_only=True, map_location="cpu")
    model.load_state_dict(state)
    return model.eval()


class IntegrityError(ValueError):
    """A model file whose bytes are not those its champion record names."""


def verified(store: ArtifactStore, key: str, files: dict[str, str] | None) -> bytes:
    """The bytes at ``key``; with ``files`` (a champion record's key -> sha256), refused
    unless they have the digest recorded there, before anything is built from them."""
    data = store.read_bytes(key)
    if files is None:
        return data
    expected, actual = files.get(key), sha256_bytes(data)
    if expected != actual:
        raise IntegrityError(
            f"{store.url(key)} has sha256 {actual}, the champion record holds "
            f"{expected or 'no digest for it'}: refused"
        )
    return data


def load_model(
    store: ArtifactStore, prefix: str, files: dict[str, str] | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """The model at ``prefix``, weights only; with ``files`` (``champion_files``) every
    byte read is checked against the champion record first."""
    info = json.loads(verified(store, f"{prefix}/model.json", files))
    weights = verified(store, f"{prefix}/model.pt", files)
    return restore_model(info, weights), info


def champion_files(pointer: dict[str, Any]) -> dict[str, str] | None:
    """What a loader of a champion checks: its record's digests (None for a record written
    before promotion recorded them)."""
    return pointer.get("files")


def model_dtype(model: nn.Module) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@torch.no_grad()
def predict_outputs(
    model: nn.Module, inputs: list[torch.Tensor], batch_size: int = 1024
) -> torch.Tensor:
    """Outputs in float32 for float32 (and int64) inputs, whatever the model's dtype."""
    dtype = model_dtype(model)
    count = inputs[0].shape[0]
    outputs = [
        model(
            *(
                x[i : i + batch_size].to(dtype) if x.is_floating_point() else x[i : i + batch_size]
                for x in inputs
            )
        ).float()
        for i in range(0, count, batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0)


def model_inputs(info: dict[str, Any], frame: pl.DataFrame) -> list[torch.Tensor]:
    """Typed rows as the input tensors of the model that ``info`` describes, encoded with that
    model's own preprocessing (vocabularies, fill values): never another model's."""
    spec = DatasetSpec.model_validate(info["spec"])
    return encode_inputs(frame, spec, info["preprocessing"])


def model_scores(
    model: nn.Module, info: dict[str, Any], inputs: list[torch.Tensor]
) -> torch.Tensor:
    """What leaves a model: class probabilities [B, classes] (float32; column i is
    ``classes[i]``), or regression values [B] (float64) in the target's unit."""
    outputs = predict_outputs(model, inputs)
    if info["dataset_info"]["task"] == "classification":
        return outputs.softmax(1)
    return unscale_target(outputs, info["preprocessing"])

"""Edge export: the champion as ONNX (``lepton export --format onnx``), served by onnxruntime
(``lepton serve --runtime onnx``) or run where torch is not installed.

What is exported is the whole ``LeptonModel`` (its preprocessing included), with one input
per ``DatasetInfo.inputs`` entry and a dynamic batch axis. A float32 champion is exported as
it is; a compressed champion whose weights torch's exporter cannot write (int8, fp16, bf16)
is exported from the fp32 variant of the same compression. ONNX Runtime's dynamic int8
quantization of that graph is written beside it (``model.int8.onnx``).

Both are checked before they are recorded: the test split's inputs are scored by torch here
and by onnxruntime in a child process in which ``import torch`` fails, so the ONNX files are
proven to run without torch. fp32 must match within rtol 1e-3 / atol 1e-5; int8 must agree
with torch on at least 99 % of top-1 classes (regression: its RMSE against torch's outputs
is reported). The record, ``<model>/onnx.json``, names the files, their sha256 and the checks.
"""

import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lepton_core.data import DatasetInfo, dummy_inputs, load_split
from lepton_core.models import load_model, model_inputs, predict_outputs
from lepton_core.store import ArtifactStore

OPSET = 17
RTOL, ATOL = 1e-3, 1e-5
MIN_INT8_AGREEMENT = 0.99

# Run by the child process: torch is made unimportable before anything else is imported.
ORT_SCRIPT = """
import sys
sys.modules["torch"] = None
import numpy as np, onnxruntime as ort
model, inputs, out = sys.argv[1:4]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
arrays = np.load(inputs)
feed = {i.name: arrays[i.name] for i in session.get_inputs()}
np.save(out, session.run(None, feed)[0])
try:
    import torch  # noqa: F401
    raise SystemExit("torch was importable")
except ImportError:
    pass
"""


class OnnxModel(nn.Module):
    """An onnxruntime session behind a module's call signature, so the server scores it as
    it scores a torch model (``models.predict_outputs``)."""

    def __init__(self, data: bytes, input_names: list[str]) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.input_names = input_names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        feed = {n: x.numpy() for n, x in zip(self.input_names, inputs, strict=True)}
        return torch.from_numpy(self.session.run(None, feed)[0])


def exportable_prefix(store: ArtifactStore, prefix: str) -> str:
    """The champion itself when its weights are float32, else its compression's fp32."""
    info = store.read_json(f"{prefix}/model.json")
    if info.get("quantization") is None and info.get("dtype", "float32") == "float32":
        return prefix
    fp32 = f"{prefix.rsplit('/', 1)[0]}/fp32"
    if not store.exists(f"{fp32}/model.json"):
        raise ValueError(f"{prefix} is {info.get('variant')} and has no fp32 sibling to export")
    return fp32


def onnx_bytes(model: nn.Module, info: dict[str, Any]) -> bytes:
    data = DatasetInfo.model_validate(info["dataset_info"])
    names = list(data.inputs)
    axes = {n: {0: "batch"} for n in [*names, "output"]}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        path = Path(tmp, "model.onnx")
        torch.onnx.export(
            model, tuple(dummy_inputs(data, 2)), str(path), input_names=names,
            output_names=["output"], dynamic_axes=axes, opset_version=OPSET, dynamo=False,
        )  # fmt: skip
        return path.read_bytes()


def quantized_int8(fp32: bytes) -> bytes:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        source, target = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        source.write_bytes(fp32)
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
        return target.read_bytes()


def run_without_torch(model: bytes, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The ONNX model's outputs, computed by onnxruntime in a process that cannot import torch."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [Path(tmp, n) for n in ("model.onnx", "inputs.npz", "out.npy")]
        paths[0].write_bytes(model)
        np.savez(paths[1], **inputs)  # type: ignore[arg-type]
        done = subprocess.run(
            [sys.executable, "-I", "-c", ORT_SCRIPT, *map(str, paths)],
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"onnxruntime without torch failed: {done.stderr[-2000:]}")
        return np.load(paths[2])


def parity(
    model: nn.Module, info: dict[str, Any], fp32: bytes, int8: bytes, inputs: list[torch.Tensor]
) -> dict[str, Any]:
    names = list(info["dataset_info"]["inputs"])
    arrays = {n: x.numpy() for n, x in zip(names, inputs, strict=True)}
    expected = predict_outputs(model, inputs).numpy()
    got, got8 = run_without_torch(fp32, arrays), run_without_torch(int8, arrays)
    checks: dict[str, Any] = {
        "rows": int(expected.shape[0]),
        "fp32_max_abs_diff": float(np.abs(got - expected).max()),
        "fp32_within_tolerance": bool(np.allclose(got, expected, rtol=RTOL, atol=ATOL)),
    }
    if info["dataset_info"]["task"] == "classification":
        agreement = float((got8.argmax(1) == expected.argmax(1)).mean())
        checks.update(int8_top1_agreement=agreement, int8_ok=agreement >= MIN_INT8_AGREEMENT)
    else:
        rmse = float(np.sqrt(((got8.reshape(-1) - expected.reshape(-1)) ** 2).mean()))
        checks.update(int8_rmse_vs_torch=rmse, int8_ok=True)
    return checks


def export_onnx(
    store: ArtifactStore, champion: str, files: dict[str, str] | None = None
) -> dict[str, Any]:
    """Write ``<model>/model.onnx`` and ``model.int8.onnx`` for ``champion`` and the record
    ``<model>/onnx.json``; raises when fp32 parity fails (nothing is recorded then). The
    int8 file is recorded with ``int8_ok`` false when it disagrees too often."""
    prefix = exportable_prefix(store, champion)
    model, info = load_model(store, prefix, files)
    fp32 = onnx_bytes(model, info)
    int8 = quantized_int8(fp32)
    test = load_split(store, info["dataset_version"], "test")
    checks = parity(model, info, fp32, int8, model_inputs(info, test))
    if not checks["fp32_within_tolerance"]:
        raise ValueError(
            f"ONNX export of {prefix} does not match torch within rtol {RTOL}, atol {ATOL} "
            f"(largest difference {checks['fp32_max_abs_diff']:.3g})"
        )
    record = {
        "champion": champion,
        "exported": prefix,
        "opset": OPSET,
        "files": {
            "fp32": {
                "key": f"{prefix}/model.onnx",
                "sha256": store.write_bytes(f"{prefix}/model.onnx", fp32),
            },
            "int8": {
                "key": f"{prefix}/model.int8.onnx",
                "sha256": store.write_bytes(f"{prefix}/model.int8.onnx", int8),
            },
        },
        "checks": checks,
    }
    store.write_json(f"{prefix}/onnx.json", record)
    return record


def load_onnx_model(store: ArtifactStore, prefix: str) -> tuple[nn.Module, dict[str, Any]]:
    """The exported fp32 ONNX graph of ``prefix`` (see ``export_onnx``) and the description
    of the model it was exported from."""
    exported = exportable_prefix(store, prefix)
    if not store.exists(f"{exported}/onnx.json"):
        raise ValueError(f"{prefix} has no ONNX export: run lepton export --format onnx")
    record = store.read_json(f"{exported}/onnx.json")
    info = {**store.read_json(f"{exported}/model.json"), "runtime": "onnxruntime"}
    data = store.read_bytes(record["files"]["fp32"]["key"])
    names = list(info["dataset_info"]["inputs"])
    return OnnxModel(data, names), info

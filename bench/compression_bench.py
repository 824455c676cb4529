"""Compression against fp32, side by side in one run, on CPU.

    .venv/bin/python bench/compression_bench.py

Two models trained here on the digits: the demo CNN, and a larger Linear-heavy MLP (two
2048-wide hidden layers, 4.3M parameters). For each: int8 against fp32 size ratio, latency
ratio at batch 1 (p50) and throughput ratio at batch 256, and the accuracy drop on held-out
rows; and structured pruning's batch-1 latency ratio. Latency is measured on one thread
(as ``compressed_model`` measures it). Targets for the Linear-heavy model: int8 at most
0.3x the size and 0.6x the batch-1 latency of fp32, within 1 point of accuracy.
"""

import copy
import json
import statistics
from typing import Any

import polars as pl
import torch
from torch import nn

from lepton_assets.demo import digits_frame
from lepton_core.compress import latency_ms, measure, variant_builders
from lepton_core.data import dataset_description, fit_preprocessing
from lepton_core.models import LeptonModel, build_model, quantize_dynamic_int8
from lepton_core.spec import DIGITS_SPEC, CompressionSettings
from lepton_core.tasks import TASKS, cross_entropy

CLASSIFICATION = TASKS["classification"]


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    frame = digits_frame()
    features = torch.from_numpy(frame.drop("sample_id", "label").to_numpy().astype("float32"))
    labels = torch.from_numpy(frame["label"].to_numpy())
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    held_out, train = order[:360], order[360:]
    return features[train], labels[train], features[held_out], labels[held_out]


def description(arch: str, widths: list[int] | None, x: torch.Tensor) -> dict[str, Any]:
    """A built-in model's description, preprocessing learned from ``x``."""
    frame = pl.DataFrame(x.numpy(), schema=DIGITS_SPEC.feature_columns)
    preprocessing = fit_preprocessing(frame, DIGITS_SPEC)
    return {
        "factory": f"lepton_core.models:{arch}",
        "kwargs": {"widths": widths} if widths else {},
        "dataset_info": dataset_description(DIGITS_SPEC, preprocessing).model_dump(),
        "preprocessing": preprocessing,
    }


def train_model(info: dict[str, Any], data: tuple[torch.Tensor, ...]) -> LeptonModel:
    x, y, _, _ = data
    torch.manual_seed(0)
    model = build_model(info)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(12):
        model.train()
        for i in range(0, len(y), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimizer.step()
    return model.eval()


def compare(
    name: str, arch: str, widths: list[int] | None, data: tuple[torch.Tensor, ...]
) -> dict[str, Any]:
    x, y, held_x, held_y = data
    info = description(arch, widths, x)
    trained = train_model(info, data)

    def base() -> LeptonModel:
        copy = build_model(info)
        copy.load_state_dict(trained.state_dict())
        return copy.eval()

    settings = CompressionSettings()
    builders = variant_builders(base, info, settings, [held_x], ([x], y), cross_entropy)
    rows = {
        v: measure(build()[0], [held_x], held_y, CLASSIFICATION)
        for v, build in builders.items()
        if v in ("fp32", "int8", "structured")
    }
    fp32, int8, structured = rows["fp32"], rows["int8"], rows["structured"]
    return {
        "model": name,
        "fp32_size_bytes": fp32["size_bytes"],
        "int8_size_ratio": round(int8["size_bytes"] / fp32["size_bytes"], 3),
        "int8_latency_b1_ratio": round(int8["latency_b1_p50_ms"] / fp32["latency_b1_p50_ms"], 3),
        "int8_latency_b256_ratio": round(
            fp32["throughput_b256_per_s"] / int8["throughput_b256_per_s"], 3
        ),
        "int8_accuracy_drop_points": round((fp32["val_accuracy"] - int8["val_accuracy"]) * 100, 2),
        "structured_latency_b1_ratio": round(
            structured["latency_b1_p50_ms"] / fp32["latency_b1_p50_ms"], 3
        ),
        "structured_accuracy_drop_points": round(
            (fp32["val_accuracy"] - structured["val_accuracy"]) * 100, 2
        ),
    }


def backend_comparison() -> None:
    """int8 backends on the Linear-heavy model, one thread: why torch.ao (see models.py)."""
    try:
        from torchao.quantization import (  # pyright: ignore[reportMissingImports]
            Int8DynamicActivationInt8WeightConfig,
            Int8WeightOnlyConfig,
            quantize_,
        )
    except ImportError:
        print("int8 backends: torchao not installed (pip install torchao to compare)")
        return
    torch.manual_seed(0)
    base = build_model(description("mlp", [2048, 2048], torch.rand(10, 64))).eval()
    candidates: dict[str, nn.Module] = {
        "fp32": base,
        "torch.ao dynamic int8": quantize_dynamic_int8(copy.deepcopy(base)),
    }
    for name, config in (
        ("torchao int8 dynamic act+weight", Int8DynamicActivationInt8WeightConfig()),
        ("torchao int8 weight-only", Int8WeightOnlyConfig()),
    ):
        model = copy.deepcopy(base)
        quantize_(model, config)
        candidates[name] = model
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    print("int8 backends, linear-heavy mlp, one thread (median ms):")
    for name, model in candidates.items():
        b1 = statistics.median(latency_ms(model, [torch.rand(1, 64)], 200))
        b256 = statistics.median(latency_ms(model, [torch.rand(256, 64)], 20))
        print(f"  {name:34s} batch 1 {b1:8.3f}   batch 256 {b256:8.3f}")
    torch.set_num_threads(threads)


def main() -> None:
    backend_comparison()
    data = digits_tensors()
    results = [
        compare("demo cnn", "cnn", None, data),
        compare("linear-heavy mlp 2048x2048", "mlp", [2048, 2048], data),
    ]
    for row in results:
        print(row["model"])
        for key, value in row.items():
            if key != "model":
                print(f"  {key:34s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

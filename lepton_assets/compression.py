"""Compression: smaller or faster variants of the trained model, measured, one chosen by policy.

Variants, each saved as a loadable model under ``compressed/<model>/<variant>/``:

- ``fp32``: the trained model, the baseline;
- ``fp16``, ``bf16``: weights and compute cast to half precision;
- ``pruned``: global magnitude pruning of conv and Linear weights to ``sparsity``, optionally
  fine-tuned with the masks held, then the masks made permanent (sparse, same shape);
- ``structured``: the lowest-L1 neurons/channels of every hidden layer removed, so the layers
  are physically narrower and faster (``mlp`` and ``cnn``; not residual nets);
- ``int8``: torch.ao quantization, dynamic for Linear-only models and static (calibrated on
  the validation split) for conv nets; see ``models.py`` for why this backend.
"""

import gzip
import statistics
import time
from collections.abc import Callable
from typing import Any, Literal

import dagster as dg
import polars as pl
import torch
from pydantic import Field
from torch import nn
from torch.nn.utils import prune

from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.models import (
    DEFAULT_WIDTHS,
    build_model,
    load_model,
    model_bytes,
    predict_logits,
    quantize_dynamic_int8,
    quantize_static_int8,
    save_model,
)
from lepton_assets.plots import pareto_png
from lepton_assets.training import current_key, features_and_labels, load_split, trained_model
from resources.artifact_store import ArtifactStoreResource


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict_logits(model, features).argmax(1) == labels).float().mean())


def prunable(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def fine_tune(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int = 0
) -> None:
    """A few epochs at a low learning rate (one process) to recover accuracy after pruning."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(features.shape[0], generator=generator)
        for i in range(0, len(order), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(features[batch]), labels[batch]).backward()
            optimizer.step()
    model.eval()


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    train: tuple[torch.Tensor, torch.Tensor] | None = None,
    finetune_epochs: int = 0,
) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights over all layers at once,
    fine-tune with the masks held (pruned weights stay zero), then make the masks permanent."""
    layers = prunable(model)
    prune.global_unstructured(
        [(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    if train is not None and finetune_epochs:
        fine_tune(model, *train, finetune_epochs)
    for module in layers:
        prune.remove(module, "weight")  # plain weights again, the zeros kept
    return model.eval()


def structured_prune(model: nn.Sequential, info: dict[str, Any], amount: float) -> nn.Sequential:
    """A narrower copy of an ``mlp`` or ``cnn``: each hidden layer keeps the ``1 - amount``
    share of its neurons/channels with the largest L1 weight norm; the next layer keeps the
    matching inputs (for conv -> Linear, every spatial position of a kept channel)."""
    if info["arch"] not in DEFAULT_WIDTHS:
        raise ValueError(
            f"structured pruning supports {sorted(DEFAULT_WIDTHS)}, not {info['arch']}"
        )
    old_layers = prunable(model)
    keeps = []
    for layer in old_layers[:-1]:
        norms = layer.weight.detach().abs().flatten(1).sum(1)
        count = max(1, round(norms.numel() * (1 - amount)))
        keeps.append(norms.topk(count).indices.sort().values)
    widths = [len(k) for k in keeps]
    new = build_model(
        info["arch"], info["num_features"], info["num_classes"], info.get("input_shape"), widths
    )
    new[0].load_state_dict(model[0].state_dict())  # the standardization statistics
    with torch.no_grad():
        for i, (old, fresh) in enumerate(zip(old_layers, prunable(new), strict=True)):
            rows = keeps[i] if i < len(keeps) else torch.arange(old.weight.shape[0])
            cols = keeps[i - 1] if i > 0 else torch.arange(old.weight.shape[1])
            previous = old_layers[i - 1] if i > 0 else None
            if isinstance(old, nn.Linear) and isinstance(previous, nn.Conv2d):
                spatial = old.in_features // previous.out_channels
                cols = (cols[:, None] * spatial + torch.arange(spatial)[None, :]).flatten()
            fresh.weight.copy_(old.weight[rows][:, cols])
            if old.bias is not None and fresh.bias is not None:
                fresh.bias.copy_(old.bias[rows])
    return new.eval()


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for m in prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int(torch.count_nonzero(w == 0)) for w in weights) / total if total else 0.0


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def latency_ms(model: nn.Module, batch: torch.Tensor, repeats: int = 50) -> list[float]:
    """Wall times (ms) of ``repeats`` forward passes at the batch's size, after warm-up."""
    for _ in range(5):
        predict_logits(model, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_logits(model, batch)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor
) -> dict[str, float | int]:
    """Size on disk (raw and gzipped), accuracy, CPU latency p50/p95 at batch 1, batch-256
    throughput. Latency runs on one thread so variants compare fairly on a busy machine."""
    weights = model_bytes(model)
    single = features[:1]
    big = features[:256].repeat(-(-256 // max(1, features.shape[0])), 1)[:256]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        b1 = latency_ms(model, single, repeats=200)
        b256 = latency_ms(model, big, repeats=20)
    finally:
        torch.set_num_threads(threads)
    return {
        "size_bytes": len(weights),
        "size_gzip_bytes": len(gzip.compress(weights, mtime=0)),
        "val_accuracy": round(accuracy(model, features, labels), 5),
        "latency_b1_p50_ms": round(statistics.median(b1), 4),
        "latency_b1_p95_ms": round(statistics.quantiles(b1, n=20)[18], 4),
        "throughput_b256_per_s": round(256 / (statistics.median(b256) / 1000), 1),
    }


class CompressionConfig(dg.Config):
    """How much to compress and how to choose the variant."""

    sparsity: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="fraction of weights zeroed by magnitude pruning"
    )
    finetune_epochs: int = Field(
        default=2, ge=0, description="epochs of fine-tuning after magnitude or structured pruning"
    )
    structured_amount: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="fraction of each hidden layer's neurons/channels removed by structured "
        "pruning",
    )
    max_accuracy_drop: float = Field(
        default=1.0,
        ge=0.0,
        description="largest validation-accuracy drop (in points) against fp32 that a chosen "
        "variant may have",
    )
    objective: Literal["size", "latency"] = Field(
        default="size",
        description="what the chosen variant minimizes within the accuracy drop: gzipped size "
        "on disk, or batch-1 p50 latency on CPU",
    )


Builders = dict[str, tuple[Callable[[], nn.Module], dict[str, Any]]]


def variant_builders(
    base: Callable[[], nn.Sequential],
    info: dict[str, Any],
    config: "CompressionConfig",
    val_features: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
) -> Builders:
    """variant -> (builder of the compressed model from a fresh copy of the base, extra
    model.json fields). Calibration uses validation rows; fine-tuning uses training rows."""
    convolutional = info["arch"] != "mlp"

    def int8() -> nn.Module:
        if convolutional:
            return quantize_static_int8(base(), val_features, info["num_features"])
        return quantize_dynamic_int8(base())

    def structured() -> nn.Module:
        model = structured_prune(base(), info, config.structured_amount)
        if config.finetune_epochs:
            fine_tune(model, *train, config.finetune_epochs)
        return model

    builders: Builders = {
        "fp32": (base, {}),
        "fp16": (lambda: base().half(), {"dtype": "float16"}),
        "bf16": (lambda: base().to(torch.bfloat16), {"dtype": "bfloat16"}),
        "pruned": (
            lambda: magnitude_prune(base(), config.sparsity, train, config.finetune_epochs),
            {"sparsity_target": config.sparsity},
        ),
        "int8": (int8, {"quantization": "int8_static" if convolutional else "int8_dynamic"}),
    }
    if info["arch"] in DEFAULT_WIDTHS:
        builders["structured"] = (structured, {})  # widths are read off the built model
    return builders


OBJECTIVE_METRIC = {"size": "size_gzip_bytes", "latency": "latency_b1_p50_ms"}


def choose_variant(
    rows: list[dict[str, Any]], max_drop_points: float, objective: str
) -> dict[str, Any]:
    """The variant best on the objective among those within the drop of fp32's accuracy
    (fp32 wins ties, and is always eligible)."""
    baseline = next(r for r in rows if r["variant"] == "fp32")
    eligible = [
        r
        for r in rows
        if (baseline["val_accuracy"] - r["val_accuracy"]) * 100 <= max_drop_points + 1e-9
    ]
    metric = OBJECTIVE_METRIC[objective]
    return min(eligible, key=lambda r: (r[metric], r["variant"] != "fp32"))


def markdown_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
        for row in frame.iter_rows()
    ]
    return "\n".join([header, rule, *body])


@dg.asset(
    deps=[trained_model],
    group_name="compression",
    kinds={"torch"},
)
def compressed_model(
    context: dg.AssetExecutionContext,
    config: CompressionConfig,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """The trained model, compressed: of fp32, fp16, bf16, pruned, structured and int8, the
    variant smallest (or fastest) while losing at most ``max_accuracy_drop`` points of
    validation accuracy.

    Every variant is saved and measured: size on disk (and gzipped: a sparse model's zeros
    compress), sparsity, parameter count, validation accuracy, CPU latency p50/p95 at batch 1
    and throughput at batch 256. The table and a Pareto plot are in the metadata.
    """
    store = artifacts.get_store()
    source = store.read_json(current_key("trained_model"))["prefix"]
    info = store.read_json(f"{source}/model.json")
    version = info["dataset_version"]
    spec = DatasetSpec.model_validate(store.read_json(f"datasets/{version}/dataset.json")["spec"])
    features, labels = features_and_labels(load_split(store, version, "val"), spec)
    train = features_and_labels(load_split(store, version, "train"), spec)

    def base() -> nn.Sequential:
        model = load_model(store, source)[0]
        if not isinstance(model, nn.Sequential):
            raise TypeError(f"{source} is a {type(model).__name__}, not a float nn.Sequential")
        return model

    name = source.rsplit("/", 1)[-1]
    rows = []
    for variant, (build, extra) in variant_builders(base, info, config, features, train).items():
        model = build()
        if variant == "structured":
            extra = {"widths": [m.weight.shape[0] for m in prunable(model)[:-1]]}
        prefix = f"compressed/{name}/{variant}"
        save_model(store, prefix, model, {**info, **extra, "variant": variant})
        float_weights = variant != "int8"
        rows.append(
            {
                "variant": variant,
                "prefix": prefix,
                **measure(model, features, labels),
                "sparsity": round(weight_sparsity(model), 4) if float_weights else None,
                "parameters": parameter_count(model) if float_weights else None,
            }
        )
        context.log.info(f"{variant}: {rows[-1]}")
    chosen = choose_variant(rows, config.max_accuracy_drop, config.objective)
    store.write_json(f"compressed/{name}/variants.json", rows)
    store.write_bytes(f"compressed/{name}/pareto.png", pareto_png(rows, chosen["variant"]))
    store.write_json(
        current_key("compressed_model"),
        {"prefix": chosen["prefix"], "source": source, "variants": f"compressed/{name}"},
    )
    baseline = rows[0]
    return dg.MaterializeResult(
        metadata={
            "chosen_variant": chosen["variant"],
            "objective": config.objective,
            "chosen_val_accuracy": chosen["val_accuracy"],
            "size_ratio_vs_fp32": round(chosen["size_bytes"] / baseline["size_bytes"], 3),
            "latency_b1_ratio_vs_fp32": round(
                chosen["latency_b1_p50_ms"] / baseline["latency_b1_p50_ms"], 3
            ),
            "variants": dg.MetadataValue.md(markdown_table(pl.DataFrame(rows).drop("prefix"))),
            "pareto_plot": dg.MetadataValue.path(store.url(f"compressed/{name}/pareto.png")),
            "path": dg.MetadataValue.path(store.url(chosen["prefix"])),
        }
    )

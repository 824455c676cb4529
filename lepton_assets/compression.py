"""Compression: smaller variants of the trained model, measured, and one chosen by policy.

Variants: ``fp32`` (the trained model, the baseline), ``pruned`` (global magnitude pruning of
conv and linear weights, masks made permanent) and ``int8_dynamic`` (int8 Linear weights).
Each is saved as a loadable model under ``compressed/<model>/<variant>/``.
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
    load_model,
    model_bytes,
    predict_logits,
    quantize_dynamic_int8,
    save_model,
)
from lepton_assets.training import current_key, load_split, trained_model
from resources.artifact_store import ArtifactStoreResource


def features_and_labels(
    frame: pl.DataFrame, spec: DatasetSpec
) -> tuple[torch.Tensor, torch.Tensor]:
    features = torch.from_numpy(frame.select(spec.feature_columns).to_numpy().astype("float32"))
    index = {c: i for i, c in enumerate(spec.classes)}
    labels = torch.tensor([index[v] for v in frame[spec.label_column].to_list()])
    return features, labels


def accuracy(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict_logits(model, features).argmax(1) == labels).float().mean())


def prunable(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def magnitude_prune(model: nn.Module, sparsity: float) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights over all layers at once."""
    layers = prunable(model)
    prune.global_unstructured(
        [(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for module in layers:
        prune.remove(module, "weight")  # make the masks permanent: plain weights again
    return model


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for m in prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int(torch.count_nonzero(w == 0)) for w in weights) / total if total else 0.0


def latency_ms(model: nn.Module, sample: torch.Tensor, repeats: int = 50) -> dict[str, float]:
    """p50/p95 wall time of one forward pass at the sample's batch size, after warm-up."""
    for _ in range(5):
        predict_logits(model, sample)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_logits(model, sample)
        times.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(times, n=20)
    return {"p50": round(statistics.median(times), 4), "p95": round(quantiles[18], 4)}


class CompressionConfig(dg.Config):
    """How much to compress and how to choose the variant."""

    sparsity: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="fraction of weights zeroed by magnitude pruning"
    )
    max_accuracy_drop: float = Field(
        default=1.0,
        ge=0.0,
        description="largest validation-accuracy drop (in points) against "
        "fp32 that a chosen variant may have",
    )
    objective: Literal["size", "latency"] = Field(
        default="size", description="what the chosen variant minimizes within the accuracy drop"
    )


def choose_variant(
    rows: list[dict[str, Any]], max_drop_points: float, objective: str
) -> dict[str, Any]:
    """The variant best on the objective among those within the drop of fp32's accuracy."""
    baseline = next(r for r in rows if r["variant"] == "fp32")
    eligible = [
        r
        for r in rows
        if (baseline["val_accuracy"] - r["val_accuracy"]) * 100 <= max_drop_points + 1e-9
    ]
    metric = "size_gzip_bytes" if objective == "size" else "latency_b1_p50_ms"
    return min(eligible, key=lambda r: (r[metric], r["variant"] != "fp32"))


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
    """The trained model, compressed: the variant (fp32, pruned, int8) that is smallest (or
    fastest) while losing at most ``max_accuracy_drop`` points of validation accuracy.

    Every variant is saved and measured: size on disk and gzipped (zeros of a sparse model
    compress), sparsity, validation accuracy and CPU latency at batch 1.
    """
    store = artifacts.get_store()
    source = store.read_json(current_key("trained_model"))["prefix"]
    info = store.read_json(f"{source}/model.json")
    spec = DatasetSpec.model_validate(
        store.read_json(f"datasets/{info['dataset_version']}/dataset.json")["spec"]
    )
    features, labels = features_and_labels(load_split(store, info["dataset_version"], "val"), spec)
    builders: dict[str, Callable[[], nn.Module]] = {
        "fp32": lambda: load_model(store, source)[0],
        "pruned": lambda: magnitude_prune(load_model(store, source)[0], config.sparsity),
        "int8_dynamic": lambda: quantize_dynamic_int8(load_model(store, source)[0]),
    }
    extra_info: dict[str, dict[str, Any]] = {
        "fp32": {},
        "pruned": {"sparsity_target": config.sparsity},
        "int8_dynamic": {"quantization": "int8_dynamic"},
    }
    name = source.rsplit("/", 1)[-1]
    rows = []
    for variant, build in builders.items():
        model = build().eval()
        weights = model_bytes(model)
        prefix = f"compressed/{name}/{variant}"
        save_model(store, prefix, model, {**info, **extra_info[variant], "variant": variant})
        rows.append(
            {
                "variant": variant,
                "prefix": prefix,
                "size_bytes": len(weights),
                "size_gzip_bytes": len(gzip.compress(weights, mtime=0)),
                "sparsity": round(weight_sparsity(model), 4) if variant != "int8_dynamic" else None,
                "val_accuracy": round(accuracy(model, features, labels), 5),
                "latency_b1_p50_ms": latency_ms(model, features[:1])["p50"],
            }
        )
    chosen = choose_variant(rows, config.max_accuracy_drop, config.objective)
    store.write_json(f"compressed/{name}/variants.json", rows)
    store.write_json(
        current_key("compressed_model"), {"prefix": chosen["prefix"], "source": source}
    )
    context.log.info(f"chose {chosen['variant']} by {config.objective}: {chosen}")
    table = pl.DataFrame(rows).drop("prefix")
    return dg.MaterializeResult(
        metadata={
            "chosen_variant": chosen["variant"],
            "chosen_val_accuracy": chosen["val_accuracy"],
            "chosen_size_bytes": chosen["size_bytes"],
            "fp32_size_bytes": rows[0]["size_bytes"],
            "variants": dg.MetadataValue.md(markdown_table(table)),
            "path": dg.MetadataValue.path(store.url(chosen["prefix"])),
        }
    )


def markdown_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
        for row in frame.iter_rows()
    ]
    return "\n".join([header, rule, *body])

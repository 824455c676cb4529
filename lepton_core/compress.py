"""Compression: smaller or faster variants of the trained model, measured, one chosen by policy.

Variants, each saved as a loadable model under ``compressed/<model>/<variant>/``:

- ``fp32``: the trained model, the baseline;
- ``fp16``, ``bf16``: weights and compute cast to half precision;
- ``pruned``: global magnitude pruning of conv and Linear weights to ``sparsity``, optionally
  fine-tuned with the masks held, then the masks made permanent (sparse, same shape);
- ``structured``: the lowest-L1 neurons/channels of every hidden layer removed, so the layers
  are physically narrower and faster (the built-in ``mlp`` and ``cnn``: they are rebuilt
  narrower by their factory's ``widths``);
- ``int8``: torch.ao quantization, static (calibrated on the validation split) where the
  model's body has conv layers, takes float inputs and can be traced by torch.fx, else
  dynamic for its Linear layers; see ``models.py`` for why this backend;
- ``distilled``: a smaller student the trained model taught (``distill.py``), trained by a
  Horovod job before compression runs (``distill_epochs`` > 0).

A variant that a model does not support is skipped with its reason, which the report shows.
"""

import gzip
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.nn.utils import prune

from lepton_core.data import load_tensors, target_scaling
from lepton_core.models import (
    BUILTIN,
    LeptonModel,
    build_model,
    load_model,
    model_bytes,
    parameter_count,
    predict_outputs,
    quantize_dynamic_int8,
    quantize_static_int8,
    save_model,
)
from lepton_core.plots import pareto_png
from lepton_core.spec import CompressionSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import Loss, Task, significant, task_of
from lepton_core.usercode import resolve

Inputs = list[torch.Tensor]
STRUCTURED_FACTORIES = (f"{BUILTIN}mlp", f"{BUILTIN}cnn")


class Unsupported(Exception):
    """This variant does not apply to this model; the message says why."""


def metric(
    model: nn.Module, inputs: Inputs, target: torch.Tensor, task: Task, unit: float = 1.0
) -> float:
    """The task's validation metric; a regression's RMSE in the target's unit (``unit``: the
    standard deviation the encoded target was scaled by)."""
    outputs = predict_outputs(model, inputs)
    return task.metric_value(task.metric_sums(outputs, target), float(target.shape[0]), unit)


def prunable(model: nn.Module) -> list[nn.Linear | nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def fine_tune(
    model: nn.Module, data: tuple[Inputs, torch.Tensor], loss_fn: Loss, epochs: int, seed: int = 0
) -> None:
    """A few epochs at a low learning rate (one process) to recover after pruning."""
    inputs, target = data
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-4)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(target.shape[0], generator=generator)
        for i in range(0, len(order), 64):
            batch = order[i : i + 64]
            optimizer.zero_grad()
            loss_fn(model(*(x[batch] for x in inputs)).float(), target[batch]).backward()
            optimizer.step()
    model.eval()


def magnitude_prune(
    model: nn.Module,
    sparsity: float,
    train: tuple[Inputs, torch.Tensor] | None = None,
    loss_fn: Loss | None = None,
    finetune_epochs: int = 0,
) -> nn.Module:
    """Zero the ``sparsity`` fraction of smallest-magnitude weights over all layers at once,
    fine-tune with the masks held (pruned weights stay zero), then make the masks permanent."""
    layers = prunable(model)
    if not layers:
        raise Unsupported("no Linear or Conv2d layer to prune")
    prune.global_unstructured(
        [(m, "weight") for m in layers], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    if train is not None and loss_fn is not None and finetune_epochs:
        fine_tune(model, train, loss_fn, finetune_epochs)
    for module in layers:
        prune.remove(module, "weight")  # plain weights again, the zeros kept
    return model.eval()


def structured_prune(model: LeptonModel, info: dict[str, Any], amount: float) -> LeptonModel:
    """A narrower copy of a built-in ``mlp`` or ``cnn``: each hidden layer keeps the
    ``1 - amount`` share of its neurons/channels with the largest L1 weight norm; the next
    layer keeps the matching inputs (for conv -> Linear, every spatial position of a kept
    channel). Other weights (preprocessing, embeddings) are copied as they are."""
    if info["factory"] not in STRUCTURED_FACTORIES:
        raise Unsupported(
            f"structured pruning rebuilds narrower layers through the factory's widths: only "
            f"{', '.join(STRUCTURED_FACTORIES)}, not {info['factory']}"
        )
    old_layers = prunable(model.body)
    keeps = []
    for layer in old_layers[:-1]:
        norms = layer.weight.detach().abs().flatten(1).sum(1)
        count = max(1, round(norms.numel() * (1 - amount)))
        keeps.append(norms.topk(count).indices.sort().values)
    widths = [len(k) for k in keeps]
    new = build_model({**info, "kwargs": {**info.get("kwargs", {}), "widths": widths}})
    pruned_names = {f"body.{n}" for n, m in model.body.named_modules() if m in old_layers}
    others = {
        k: v for k, v in model.state_dict().items() if k.rsplit(".", 1)[0] not in pruned_names
    }
    new.load_state_dict(others, strict=False)
    with torch.no_grad():
        for i, (old, fresh) in enumerate(zip(old_layers, prunable(new.body), strict=True)):
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


def int8_kind(model: LeptonModel) -> str:
    """``int8_static`` or ``int8_dynamic`` for this model; Unsupported with the reason."""
    layers = prunable(model.body)
    convolutional = any(isinstance(m, nn.Conv2d) for m in layers)
    if convolutional and "categorical" not in model.info.inputs:
        try:
            torch.fx.symbolic_trace(model.body)
        except Exception as exc:  # any tracing failure means: no static graph mode here
            if not any(isinstance(m, nn.Linear) for m in layers):
                raise Unsupported(
                    f"cannot be traced by torch.fx ({exc}) and has no Linear layer"
                ) from exc
        else:
            return "int8_static"
    if any(isinstance(m, nn.Linear) for m in layers):
        return "int8_dynamic"
    raise Unsupported("no Linear layer for dynamic int8 and no traceable conv body for static")


def weight_sparsity(model: nn.Module) -> float:
    weights = [m.weight.detach() for m in prunable(model)]
    total = sum(w.numel() for w in weights)
    return sum(int(torch.count_nonzero(w == 0)) for w in weights) / total if total else 0.0


def latency_ms(model: nn.Module, batch: Inputs, repeats: int = 50) -> list[float]:
    """Wall times (ms) of ``repeats`` forward passes at the batch's size, after warm-up."""
    for _ in range(5):
        predict_outputs(model, batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        predict_outputs(model, batch)
        times.append((time.perf_counter() - start) * 1000)
    return times


def measure(
    model: nn.Module, inputs: Inputs, target: torch.Tensor, task: Task, unit: float = 1.0
) -> dict[str, float | int]:
    """Size on disk (raw and gzipped), the validation metric, CPU latency p50/p95 at batch 1,
    batch-256 throughput. Latency runs on one thread so variants compare fairly."""
    weights = model_bytes(model)
    count = inputs[0].shape[0]
    single = [x[:1] for x in inputs]
    big = [x[:256].repeat(-(-256 // max(1, count)), *([1] * (x.dim() - 1)))[:256] for x in inputs]
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
        task.metric: significant(metric(model, inputs, target, task, unit)),
        "latency_b1_p50_ms": round(statistics.median(b1), 4),
        "latency_b1_p95_ms": round(statistics.quantiles(b1, n=20)[18], 4),
        "throughput_b256_per_s": round(256 / (statistics.median(b256) / 1000), 1),
    }


Builders = dict[str, Callable[[], tuple[nn.Module, dict[str, Any]]]]


def variant_builders(
    base: Callable[[], LeptonModel],
    info: dict[str, Any],
    settings: CompressionSettings,
    val_inputs: Inputs,
    train: tuple[Inputs, torch.Tensor],
    loss_fn: Loss,
    student: Callable[[], tuple[nn.Module, dict[str, Any]]] | None = None,
) -> Builders:
    """variant -> builder of (compressed model, extra model.json fields) from a fresh copy of
    the base. A builder raises ``Unsupported`` for a model it does not apply to.
    Calibration uses validation rows; fine-tuning uses training rows."""

    def int8() -> tuple[nn.Module, dict[str, Any]]:
        kind = int8_kind(base())
        if kind == "int8_static":
            return quantize_static_int8(base(), val_inputs), {"quantization": kind}
        return quantize_dynamic_int8(base()), {"quantization": kind}

    def structured() -> tuple[nn.Module, dict[str, Any]]:
        model = structured_prune(base(), info, settings.structured_amount)
        if settings.finetune_epochs:
            fine_tune(model, train, loss_fn, settings.finetune_epochs)
        widths = [m.weight.shape[0] for m in prunable(model.body)[:-1]]
        return model, {"kwargs": {**info.get("kwargs", {}), "widths": widths}}

    def pruned() -> tuple[nn.Module, dict[str, Any]]:
        model = magnitude_prune(base(), settings.sparsity, train, loss_fn, settings.finetune_epochs)
        return model, {"sparsity_target": settings.sparsity}

    return {
        "fp32": lambda: (base(), {}),
        "fp16": lambda: (base().half(), {"dtype": "float16"}),
        "bf16": lambda: (base().to(torch.bfloat16), {"dtype": "bfloat16"}),
        "pruned": pruned,
        "structured": structured,
        "int8": int8,
        "distilled": student or trained_student(None, "", None),
    }


def eligible(row: dict[str, Any], baseline: dict[str, Any], settings: CompressionSettings) -> bool:
    """Within the allowed loss of the fp32 baseline's validation metric."""
    if "val_accuracy" in baseline:
        drop_points = (baseline["val_accuracy"] - row["val_accuracy"]) * 100
        return drop_points <= settings.max_accuracy_drop + 1e-9
    return row["val_rmse"] <= baseline["val_rmse"] * (1 + settings.max_rmse_increase) + 1e-12


OBJECTIVE_METRIC = {"size": "size_gzip_bytes", "latency": "latency_b1_p50_ms"}


def choose_variant(rows: list[dict[str, Any]], settings: CompressionSettings) -> dict[str, Any]:
    """The variant best on the objective among those within the allowed loss of fp32
    (fp32 wins ties, and is always eligible)."""
    baseline = next(r for r in rows if r["variant"] == "fp32")
    candidates = [r for r in rows if eligible(r, baseline, settings)]
    key = OBJECTIVE_METRIC[settings.objective]
    return min(candidates, key=lambda r: (r[key], r["variant"] != "fp32"))


def trained_student(
    store: ArtifactStore | None, source: str, student: str | Unsupported | None
) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    """The builder of the distilled variant: the student trained at the prefix ``student``
    (``Unsupported`` with the reason it could not be trained, None when none was asked)."""

    def load() -> tuple[nn.Module, dict[str, Any]]:
        if student is None:
            raise Unsupported("distill_epochs is 0: no student was trained")
        if isinstance(student, Unsupported):
            raise student
        assert store is not None
        model, info = load_model(store, student)
        own = {k: info.get(k) for k in ("factory", "kwargs", "code_path")}
        return model, {**own, "teacher": source, "student": student}

    return load


def compress_model(
    store: ArtifactStore,
    source: str,
    settings: CompressionSettings,
    log: Callable[[str], None] = lambda _: None,
    student: str | Unsupported | None = None,
) -> dict[str, Any]:
    """Build, save and measure every variant of the model at ``source``; choose one.

    Writes ``compressed/<model>/<variant>/`` per variant, ``variants.json`` (``built`` rows
    and ``skipped`` variants with their reasons) and ``pareto.png``. A variant the model
    does not support, or that fails to build for it, is skipped with the reason; fp32 never
    is (its failure fails the run)."""
    info = store.read_json(f"{source}/model.json")
    version, task = info["dataset_version"], task_of(info["dataset_info"]["task"])
    val, train = load_tensors(store, version, "val"), load_tensors(store, version, "train")
    unit = target_scaling(info["preprocessing"])[1]
    loss_fn = resolve(info["loss"], info.get("code_path"), "loss") if info.get("loss") else None

    def base() -> LeptonModel:
        model = load_model(store, source)[0]
        if not isinstance(model, LeptonModel):
            raise TypeError(f"{source} is a {type(model).__name__}, not a float LeptonModel")
        return model

    name = source.rsplit("/", 1)[-1]
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    builders = variant_builders(
        base, info, settings, val[0], train, loss_fn or task.default_loss,
        trained_student(store, source, student),
    )  # fmt: skip
    for variant, build in builders.items():
        try:
            model, extra = build()
            measured = measure(model, *val, task, unit)
        except Exception as exc:  # recorded and reported: the variant is skipped, not hidden
            if variant == "fp32":
                raise
            reason = str(exc) if isinstance(exc, Unsupported) else f"{type(exc).__name__}: {exc}"
            skipped.append({"variant": variant, "reason": reason})
            log(f"{variant}: skipped: {reason}")
            continue
        prefix = f"compressed/{name}/{variant}"
        save_model(store, prefix, model, {**info, **extra, "variant": variant, "source": source})
        float_weights = not extra.get("quantization")
        rows.append(
            {
                "variant": variant,
                "prefix": prefix,
                **measured,
                "sparsity": round(weight_sparsity(model), 4) if float_weights else None,
                "parameters": parameter_count(model) if float_weights else None,
            }
        )
        log(f"{variant}: {rows[-1]}")
    chosen = choose_variant(rows, settings)
    store.write_json(f"compressed/{name}/variants.json", {"built": rows, "skipped": skipped})
    store.write_bytes(
        f"compressed/{name}/pareto.png", pareto_png(rows, chosen["variant"], task.metric)
    )
    return {"name": name, "rows": rows, "skipped": skipped, "chosen": chosen, "metric": task.metric}

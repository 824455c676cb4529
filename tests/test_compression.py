"""Compression variants, the selection policy, blessing rules, rollback and predictions."""

from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from torch import nn

from lepton_core.compress import (
    Unsupported,
    choose_variant,
    int8_kind,
    parameter_count,
    prunable,
    variant_builders,
    weight_sparsity,
)
from lepton_core.evaluate import (
    bless,
    expected_calibration_error,
    regression_metrics,
    wilson_interval,
)
from lepton_core.models import LeptonModel, build_model, load_model, predict_outputs, save_model
from lepton_core.predict import predict_frame
from lepton_core.registry import (
    champion_history,
    champion_lineage,
    current_champion,
    promote,
    rollback,
)
from lepton_core.spec import CompressionSettings, EvaluationSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import cross_entropy

from .conftest import digits_model_info


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_variant_saves_loads_and_predicts(tmp_path, arch: str):
    store = ArtifactStore(f"file://{tmp_path}")
    torch.manual_seed(0)
    info = digits_model_info(arch)
    reference = build_model(info).eval()
    features, labels = torch.rand(300, 64), torch.randint(0, 10, (300,))
    settings = CompressionSettings(sparsity=0.6, structured_amount=0.5, finetune_epochs=1)

    def base() -> LeptonModel:
        model = build_model(info)
        model.load_state_dict(reference.state_dict())
        return model.eval()

    builders = variant_builders(
        base, info, settings, [features], ([features], labels), cross_entropy
    )
    assert set(builders) == {"fp32", "fp16", "bf16", "pruned", "int8", "structured", "distilled"}
    with pytest.raises(Unsupported, match="distill_epochs is 0: no student was trained"):
        builders.pop("distilled")()
    for variant, build in builders.items():
        model, extra = build()
        if variant == "structured":
            assert parameter_count(model) < parameter_count(reference) / 2
        if variant == "pruned":
            assert weight_sparsity(model) == pytest.approx(0.6, abs=0.005)
        if variant == "int8":
            assert extra["quantization"] == ("int8_static" if arch == "cnn" else "int8_dynamic")
        save_model(store, variant, model, {**info, **extra, "variant": variant})
        loaded, _ = load_model(store, variant)
        out = predict_outputs(loaded, [features[:7]])
        assert out.shape == (7, 10) and torch.isfinite(out).all(), variant
        assert torch.allclose(out, predict_outputs(model, [features[:7]])), variant


def test_structured_pruning_is_skipped_with_its_reason_for_other_factories():
    info = digits_model_info("cnn")
    info["factory"] = "lepton_core.models:resnet"
    info["dataset_info"]["numeric_shape"] = [1, 8, 8]
    builders = variant_builders(
        lambda: build_model(info),
        info,
        CompressionSettings(),
        [torch.rand(4, 64)],
        ([torch.rand(4, 64)], torch.zeros(4, dtype=torch.long)),
        cross_entropy,
    )
    with pytest.raises(Unsupported, match="only lepton_core.models:mlp, lepton_core.models:cnn"):
        builders["structured"]()


class Untraceable(nn.Module):
    """A conv body with data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            x = x * 2
        return self.conv(x.reshape(-1, 1, 8, 8)).flatten(1)[:, :10]


def test_int8_is_static_only_for_a_traceable_conv_body():
    info = digits_model_info("cnn")
    assert int8_kind(build_model(info)) == "int8_static"
    assert int8_kind(build_model(digits_model_info("mlp"))) == "int8_dynamic"
    untraceable = LeptonModel(Untraceable(), build_model(info).info)
    with pytest.raises(Unsupported, match="cannot be traced by torch.fx"):
        int8_kind(untraceable)
    assert prunable(untraceable.body)  # pruning still applies to it


def test_selection_picks_the_best_variant_within_the_accuracy_drop():
    rows = [
        {"variant": "fp32", "val_accuracy": 0.99, "size_gzip_bytes": 100, "latency_b1_p50_ms": 1.0},
        {"variant": "int8", "val_accuracy": 0.985, "size_gzip_bytes": 30, "latency_b1_p50_ms": 1.2},
        {
            "variant": "structured",
            "val_accuracy": 0.97,
            "size_gzip_bytes": 20,
            "latency_b1_p50_ms": 0.4,
        },
    ]

    def choose(drop: float, objective: str) -> str:
        settings = CompressionSettings(max_accuracy_drop=drop, objective=objective)  # type: ignore[arg-type]
        return choose_variant(rows, settings)["variant"]

    assert choose(1.0, "size") == "int8"
    assert choose(2.5, "size") == "structured"
    assert choose(1.0, "latency") == "fp32"
    assert choose(0.0, "size") == "fp32"


def test_selection_for_regression_allows_a_relative_rmse_increase():
    rows = [
        {"variant": "fp32", "val_rmse": 1.0, "size_gzip_bytes": 100, "latency_b1_p50_ms": 1.0},
        {"variant": "int8", "val_rmse": 1.015, "size_gzip_bytes": 30, "latency_b1_p50_ms": 1.2},
        {"variant": "pruned", "val_rmse": 1.05, "size_gzip_bytes": 20, "latency_b1_p50_ms": 1.0},
    ]
    assert choose_variant(rows, CompressionSettings())["variant"] == "int8"
    loose = CompressionSettings(max_rmse_increase=0.1)
    assert choose_variant(rows, loose)["variant"] == "pruned"


def metrics(accuracy: float, f1s: list[float]) -> dict[str, Any]:
    return {"accuracy": accuracy, "per_class": [{"class": i, "f1": f} for i, f in enumerate(f1s)]}


def test_blessing_rules():
    config = EvaluationSettings(min_accuracy=0.9, max_regression=0.005, max_class_regression=0.05)
    champion = metrics(0.95, [0.95, 0.95])
    task = "classification"
    assert bless(task, metrics(0.96, [0.96, 0.96]), champion, config) == []
    assert bless(task, metrics(0.96, [0.96, 0.96]), None, config) == []
    assert bless(task, metrics(0.85, [0.9, 0.8]), None, config) == [
        "test accuracy 0.8500 is below the floor 0.9000"
    ]
    assert bless(task, metrics(0.94, [0.95, 0.93]), champion, config) == [
        "test accuracy 0.9400 is more than 0.0050 below the champion's 0.9500"
    ]
    assert bless(task, metrics(0.96, [0.99, 0.89]), champion, config) == [
        "class 1: F1 0.8900 is more than 0.0500 below the champion's 0.9500"
    ]


def test_regression_metrics_and_blessing_rules():
    truth = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scores = regression_metrics(torch.tensor([1.5, 2.0, 2.5, 4.0]), truth)
    # 95 % intervals of the means of squared and absolute errors (clamped at 0), by hand.
    intervals = {"rmse": [0.0, 0.51619], "mae": [0.0, 0.5329]}
    assert scores == {"rmse": 0.35355, "mae": 0.25, "r2": 0.9, "intervals": intervals}
    # Wilson's interval of an accuracy: 95 of 100 gives the textbook (0.8882, 0.9785).
    assert wilson_interval(95, 100) == [0.88825, 0.97846]
    assert wilson_interval(10, 10) == [0.72247, 1.0]
    config = EvaluationSettings(min_r2=0.5, max_rmse=1.0, max_rmse_regression=0.05)
    assert bless("regression", scores, None, config) == []
    assert bless("regression", {"rmse": 2.0, "mae": 2.0, "r2": 0.2}, None, config) == [
        "test R² 0.2 is below the floor 0.5000",
        "test RMSE 2.0000 is above the ceiling 1.0000",
    ]
    champion = {"rmse": 0.3, "mae": 0.2, "r2": 0.95}
    assert bless("regression", scores, champion, config) == [
        "test RMSE 0.3535 is more than 5.0% above the champion's 0.3000"
    ]


def test_expected_calibration_error():
    confidence = np.array([0.9] * 10)
    assert expected_calibration_error(confidence, np.array([True] * 9 + [False])) == pytest.approx(
        0
    )
    assert expected_calibration_error(confidence, np.array([True] * 5 + [False] * 5)) == (
        pytest.approx(0.4)
    )


def test_rollback_restores_the_previous_champion_and_history_only_grows(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}")
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(store, "run-0")
    for i, name in enumerate(["m/one", "m/two", "m/three"]):
        promote(store, {"model_prefix": name, "test_accuracy": 0.9 + i / 100}, f"run-{i}")
    assert rollback(store, "run-r1")["model_prefix"] == "m/two"
    record = rollback(store, "run-r2")
    assert record["model_prefix"] == "m/one" and record["test_accuracy"] == 0.9
    assert current_champion(store) == record
    assert [r["action"] for r in champion_history(store)] == ["promote"] * 3 + ["rollback"] * 2
    assert [r["model_prefix"] for r in champion_lineage(champion_history(store))] == ["m/one"]
    with pytest.raises(ValueError, match="no earlier champion"):
        rollback(store, "run-r3")


def test_predict_uses_the_champion_and_names_missing_columns(tmp_path):
    store = ArtifactStore(f"file://{tmp_path}")
    info = digits_model_info("cnn")
    save_model(store, "m/one", build_model(info).eval(), info)
    promote(store, {"model_prefix": "m/one"}, "run-1")
    frame = pl.DataFrame(
        {"sample_id": ["a", "b"], **{f"pixel_{i:02d}": [1.0, 2.0] for i in range(64)}}
    )
    out, used = predict_frame(store, frame)
    assert used == "m/one" and out.columns == ["sample_id", "prediction", "confidence"]
    assert out.height == 2 and out["confidence"].is_between(0, 1).all()
    with pytest.raises(ValueError, match=r"lacks the model's feature columns \['pixel_63'\]"):
        predict_frame(store, frame.drop("pixel_63"))

"""Compression variants, the selection policy, blessing rules, rollback and predictions."""

from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from lepton_assets.champion_pointer import (
    champion_history,
    champion_lineage,
    current_champion,
    promote,
    rollback,
)
from lepton_assets.compression import (
    CompressionConfig,
    choose_variant,
    parameter_count,
    prunable,
    variant_builders,
    weight_sparsity,
)
from lepton_assets.evaluation import EvaluationConfig, bless, expected_calibration_error
from lepton_assets.models import build_model, load_model, predict_logits, save_model
from lepton_assets.predict import predict_frame
from resources.artifact_store import ArtifactStore


def info_for(arch: str) -> dict[str, Any]:
    return {
        "arch": arch,
        "num_features": 64,
        "num_classes": 10,
        "classes": list(range(10)),
        "input_shape": [1, 8, 8],
        "feature_columns": [f"pixel_{i:02d}" for i in range(64)],
        "dataset_version": "v",
        "variant": "fp32",
        "dtype": "float32",
    }


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_variant_saves_loads_and_predicts(tmp_path, arch: str):
    store = ArtifactStore(f"file://{tmp_path}")
    torch.manual_seed(0)
    reference = build_model(arch, 64, 10, [1, 8, 8]).eval()
    features, labels = torch.rand(300, 64), torch.randint(0, 10, (300,))
    config = CompressionConfig(sparsity=0.6, structured_amount=0.5, finetune_epochs=1)

    def base():
        model = build_model(arch, 64, 10, [1, 8, 8])
        model.load_state_dict(reference.state_dict())
        return model.eval()

    builders = variant_builders(base, info_for(arch), config, features, (features, labels))
    assert set(builders) == {"fp32", "fp16", "bf16", "pruned", "int8", "structured"}
    for variant, (build, extra) in builders.items():
        model = build()
        if variant == "structured":
            extra = {"widths": [m.weight.shape[0] for m in prunable(model)[:-1]]}
            assert parameter_count(model) < parameter_count(reference) / 2
        if variant == "pruned":
            assert weight_sparsity(model) == pytest.approx(0.6, abs=0.005)
        save_model(store, variant, model, {**info_for(arch), **extra, "variant": variant})
        loaded, _ = load_model(store, variant)
        out = predict_logits(loaded, features[:7])
        assert out.shape == (7, 10) and torch.isfinite(out).all(), variant
        assert torch.allclose(out, predict_logits(model, features[:7])), variant


def test_structured_pruning_is_refused_for_residual_nets():
    info = {**info_for("resnet"), "input_shape": [3, 32, 32], "num_features": 3072}
    builders = variant_builders(
        lambda: build_model("resnet", 3072, 10, [3, 32, 32]),
        info,
        CompressionConfig(),
        torch.rand(4, 3072),
        (torch.rand(4, 3072), torch.zeros(4, dtype=torch.long)),
    )
    assert "structured" not in builders


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
    assert choose_variant(rows, 1.0, "size")["variant"] == "int8"
    assert choose_variant(rows, 2.5, "size")["variant"] == "structured"
    assert choose_variant(rows, 1.0, "latency")["variant"] == "fp32"
    assert choose_variant(rows, 0.0, "size")["variant"] == "fp32"


def metrics(accuracy: float, f1s: list[float]) -> dict[str, Any]:
    return {"accuracy": accuracy, "per_class": [{"class": i, "f1": f} for i, f in enumerate(f1s)]}


def test_blessing_rules():
    config = EvaluationConfig(min_accuracy=0.9, max_regression=0.005, max_class_regression=0.05)
    champion = metrics(0.95, [0.95, 0.95])
    assert bless(metrics(0.96, [0.96, 0.96]), champion, config) == []
    assert bless(metrics(0.96, [0.96, 0.96]), None, config) == []
    assert bless(metrics(0.85, [0.9, 0.8]), None, config) == [
        "test accuracy 0.8500 is below the floor 0.9000"
    ]
    assert bless(metrics(0.94, [0.95, 0.93]), champion, config) == [
        "test accuracy 0.9400 is more than 0.0050 below the champion's 0.9500"
    ]
    assert bless(metrics(0.96, [0.99, 0.89]), champion, config) == [
        "class 1: F1 0.8900 is more than 0.0500 below the champion's 0.9500"
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
    model = build_model("cnn", 64, 10, [1, 8, 8]).eval()
    save_model(store, "m/one", model, info_for("cnn"))
    promote(store, {"model_prefix": "m/one"}, "run-1")
    frame = pl.DataFrame(
        {"sample_id": ["a", "b"], **{f"pixel_{i:02d}": [1.0, 2.0] for i in range(64)}}
    )
    out, used = predict_frame(store, frame)
    assert used == "m/one" and out.columns == ["sample_id", "prediction", "confidence"]
    assert out.height == 2 and out["confidence"].is_between(0, 1).all()
    with pytest.raises(ValueError, match=r"lacks the model's feature columns \['pixel_63'\]"):
        predict_frame(store, frame.drop("pixel_63"))

"""Built-in factories, the model contract, and weights-only loading."""

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from lepton_core.models import (
    build_model,
    check_outputs,
    model_bytes,
    quantize_dynamic_int8,
    restore_model,
)
from lepton_core.usercode import UserCodeError

from .conftest import digits_model_info

INFO = digits_model_info("cnn")


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_builtin_factories_take_flat_features_and_return_logits(arch: str):
    model = build_model(digits_model_info(arch))
    assert model(torch.rand(5, 64)).shape == (5, 10)


def test_nulls_are_filled_with_the_stored_value_before_standardizing():
    info = digits_model_info("mlp")
    info["preprocessing"]["numeric"]["fill"] = [2.0] * 64
    info["preprocessing"]["numeric"]["mean"] = [1.0] * 64
    info["preprocessing"]["numeric"]["std"] = [0.5] * 64
    model = build_model(info)
    x = torch.full((1, 64), float("nan"))
    assert torch.equal(model.preprocess(x), torch.full((1, 64), 2.0))  # (2 - 1) / 0.5


def test_fp32_and_int8_models_round_trip_through_weights_only_loading():
    model = build_model(INFO).eval()
    x = torch.rand(4, 64)
    restored = restore_model(INFO, model_bytes(model))
    assert torch.allclose(restored(x), model(x))
    quantized = quantize_dynamic_int8(build_model(INFO))
    restored_q = restore_model({**INFO, "quantization": "int8_dynamic"}, model_bytes(quantized))
    assert torch.allclose(restored_q(x), quantized(x))


def test_a_factory_that_cannot_be_imported_or_returns_no_module_is_named():
    with pytest.raises(UserCodeError, match=r"model factory 'nowhere.models:net': cannot import"):
        build_model({**INFO, "factory": "nowhere.models:net"})
    with pytest.raises(
        UserCodeError, match=r"'builtins:repr'.*returned str, not a torch.nn.Module"
    ):
        build_model({**INFO, "factory": "builtins:repr", "kwargs": {}})


def test_an_output_shape_that_does_not_fit_the_task_is_named():
    info = digits_model_info("mlp")
    info["dataset_info"]["num_outputs"] = 3  # the factory builds 3 outputs for 10 classes
    model = build_model(info)
    info["dataset_info"]["num_outputs"] = 10
    with pytest.raises(UserCodeError, match=r"output shape \[2, 3\] does not fit.*\[2, 10\]"):
        check_outputs(model, info)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"preprocess.mean": _Exploit(marker)}, buf)
    with pytest.raises(pickle.UnpicklingError):
        restore_model(INFO, buf.getvalue())
    assert not marker.exists()

import io
import os
import pickle
from pathlib import Path

import pytest
import torch

from lepton_assets.models import build_model, model_bytes, quantize_dynamic_int8, restore_model

INFO = {"arch": "cnn", "num_features": 64, "num_classes": 10, "input_shape": [1, 8, 8]}


@pytest.mark.parametrize("arch,shape", [("mlp", None), ("cnn", [1, 8, 8])])
def test_models_take_flat_features_and_return_logits(arch: str, shape: list[int] | None):
    model = build_model(arch, 64, 10, shape)
    assert model(torch.rand(5, 64)).shape == (5, 10)


def test_fp32_and_int8_models_round_trip_through_weights_only_loading():
    model = build_model("cnn", 64, 10, [1, 8, 8]).eval()
    x = torch.rand(4, 64)
    restored = restore_model(INFO, model_bytes(model))
    assert torch.allclose(restored(x), model(x))
    quantized = quantize_dynamic_int8(build_model("cnn", 64, 10, [1, 8, 8]))
    restored_q = restore_model({**INFO, "quantization": "int8_dynamic"}, model_bytes(quantized))
    assert torch.allclose(restored_q(x), quantized(x))


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_runs_code_when_unpickled_is_refused(tmp_path: Path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"0.mean": _Exploit(marker)}, buf)
    with pytest.raises(pickle.UnpicklingError):
        restore_model(INFO, buf.getvalue())
    assert not marker.exists()

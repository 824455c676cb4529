"""The Horovod worker's logic in one process (np=1): training, checkpoints, resume, stopping."""

import io
from typing import Any

import horovod.torch as hvd
import pytest
import torch

from lepton_core.compress import metric
from lepton_core.data import load_tensors, read_dataset_info
from lepton_core.models import load_model, model_description
from lepton_core.spec import DIGITS_PROJECT, ModelRef, Project, TrainingSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import TASKS
from lepton_core.train_worker import Trainer, parameter_digest, train, warmup_factor


@pytest.fixture(scope="module", autouse=True)
def horovod_single_process():
    hvd.init()  # no horovodrun: one rank, size 1
    yield
    hvd.shutdown()


def job(store: ArtifactStore, version: str, arch: str = "cnn", **overrides: Any) -> dict[str, Any]:
    """A worker job as trained_model writes it, for a built-in network."""
    model = ModelRef(factory=f"lepton_core.models:{arch}")
    project = Project(dataset=DIGITS_PROJECT.dataset, model=model)
    return {
        **TrainingSettings().model_dump(),
        "model_info": model_description(project, read_dataset_info(store, version)),
        "loss": None,
        "dataset_version": version,
        "output_prefix": "models/test",
        "checkpoint_prefix": "checkpoints/test/run-1",
        "patience": 0,
        **overrides,
    }


def test_warmup_ramps_from_one_process_rate_to_scaled_rate():
    assert warmup_factor(0, 100, 4) == 0.25
    assert warmup_factor(50, 100, 4) == pytest.approx(0.625)
    assert warmup_factor(100, 100, 4) == 1.0
    assert warmup_factor(0, 0, 4) == 1.0


def test_trains_checkpoints_every_epoch_and_resumes_where_it_stopped(
    artifacts: ArtifactStore, dataset_version: str
):
    train(artifacts, job(artifacts, dataset_version, epochs=2), None)
    saved = io.BytesIO(artifacts.read_bytes("checkpoints/test/run-1/latest.pt"))
    checkpoint = torch.load(saved, weights_only=True)
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2

    trainer = Trainer(artifacts, job(artifacts, dataset_version, epochs=4), None)
    trainer.prepare()
    assert trainer.epoch == 2 and trainer.resumed_from == 2
    trainer.run()
    trainer.finish()
    history = artifacts.read_json("models/test/history.json")
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]

    model, info = load_model(artifacts, "models/test")
    assert info["factory"] == "lepton_core.models:cnn"
    assert info["dataset_version"] == dataset_version
    inputs, labels = load_tensors(artifacts, dataset_version, "val")
    assert metric(model, inputs, labels, TASKS["classification"]) > 0.9


def test_a_new_lineage_starts_from_scratch(artifacts: ArtifactStore, dataset_version: str):
    train(artifacts, job(artifacts, dataset_version, epochs=1), None)
    trainer = Trainer(
        artifacts,
        job(artifacts, dataset_version, epochs=1, checkpoint_prefix="checkpoints/test/run-2"),
        None,
    )
    trainer.prepare()
    assert trainer.epoch == 0


def test_early_stopping_keeps_the_best_epoch(artifacts: ArtifactStore, dataset_version: str):
    trainer = Trainer(
        artifacts, job(artifacts, dataset_version, epochs=40, patience=2, learning_rate=3e-3), None
    )
    trainer.prepare()
    trainer.run()
    trainer.finish()
    history = artifacts.read_json("models/test/history.json")
    assert len(history) < 40
    best = min(history, key=lambda h: h["val_loss"])
    assert trainer.best["epoch"] == best["epoch"]
    assert history[-1]["epoch"] - best["epoch"] == 2


def test_loader_worker_processes_train_the_same_model_bit_for_bit(
    artifacts: ArtifactStore, dataset_version: str
):
    """Batches read by two worker processes (kept across epochs) train exactly the model that
    batches read in the training process train: same parameters, same losses."""
    ends = []
    for workers in (0, 2):
        prefixes = {"output_prefix": f"models/w{workers}", "checkpoint_prefix": f"ck/w{workers}"}
        settings = {"arch": "mlp", "epochs": 2, "loader_workers": workers, **prefixes}
        trainer = Trainer(artifacts, job(artifacts, dataset_version, **settings), None)
        trainer.prepare()
        trainer.run()
        trainer.finish()
        ends.append((parameter_digest(trainer.model), [h["train_loss"] for h in trainer.history]))
    assert ends[0] == ends[1]


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_every_architecture_trains_an_epoch(
    artifacts: ArtifactStore, dataset_version: str, arch: str
):
    train(artifacts, job(artifacts, dataset_version, epochs=1, arch=arch), None)
    assert artifacts.exists("models/test/model.pt")


@pytest.mark.gpu
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_cuda_mixed_precision_trains(artifacts: ArtifactStore, dataset_version: str, amp: str):
    trainer = Trainer(artifacts, job(artifacts, dataset_version, epochs=3, amp=amp), None)
    assert trainer.device.type == "cuda" and trainer.use_amp
    trainer.prepare()
    trainer.run()
    trainer.finish()
    history = artifacts.read_json("models/test/history.json")
    assert history[-1]["val_accuracy"] > 0.9


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_on_cpu_runs_the_cuda_path_and_checkpoints_the_scaler(
    artifacts: ArtifactStore, dataset_version: str, amp: str
):
    """amp_on_cpu takes the training step CUDA takes (autocast, and for fp16 a gradient
    scaler whose state is checkpointed and restored on resume), with CPU autocast."""
    settings = {"epochs": 2, "amp": amp, "amp_on_cpu": True, "learning_rate": 3e-3}
    trainer = Trainer(artifacts, job(artifacts, dataset_version, arch="mlp", **settings), None)
    assert trainer.use_amp and trainer.device.type == "cpu"
    assert trainer.scaler.is_enabled() == (amp == "fp16")
    seen: set[torch.dtype] = set()
    first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda module, args, out: seen.add(out.dtype))
    trainer.prepare()
    trainer.train_epoch(trainer.streams()[0])
    assert torch.bfloat16 in seen if amp == "bf16" else torch.float16 in seen
    trainer.run()
    trainer.finish()
    assert artifacts.read_json("models/test/history.json")[-1]["val_accuracy"] > 0.8
    saved = io.BytesIO(artifacts.read_bytes("checkpoints/test/run-1/latest.pt"))
    scaler = torch.load(saved, weights_only=True)["scaler"]
    if amp == "fp16":
        assert scaler["scale"] > 0 and scaler["_growth_tracker"] > 0
        more = {**settings, "epochs": 3}
        resumed = Trainer(artifacts, job(artifacts, dataset_version, arch="mlp", **more), None)
        resumed.prepare()
        assert resumed.scaler.state_dict() == scaler
    else:
        assert scaler == {}  # bf16 needs no loss scaling

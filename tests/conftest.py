import os
from datetime import date
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from lepton_assets.demo import digits_frame, seed_landing
from lepton_core.data import build_dataset, dataset_description
from lepton_core.keys import current_key
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore

DEMO_END = date(2026, 1, 7)


def digits_model_info(arch: str = "cnn", **kwargs: Any) -> dict[str, Any]:
    """The description of a built-in digits model (identity preprocessing), as saved."""
    columns = DIGITS_SPEC.feature_columns
    preprocessing = {
        "numeric": {"columns": columns, "fill": [0.0] * 64, "mean": [0.0] * 64, "std": [1.0] * 64},
        "categorical": {},
    }
    return {
        "factory": f"lepton_core.models:{arch}",
        "kwargs": kwargs,
        "code_path": None,
        "loss": None,
        "dataset_version": "v",
        "dataset_info": dataset_description(DIGITS_SPEC, preprocessing).model_dump(),
        "spec": DIGITS_SPEC.model_dump(),
        "preprocessing": preprocessing,
        "variant": "fp32",
        "dtype": "float32",
    }


@pytest.fixture
def lepton_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty embedded home for one test; no LEPTON_* setting leaks in from the shell."""
    for name in list(os.environ):
        if name.startswith("LEPTON_") or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    home = tmp_path / "lepton"
    monkeypatch.setenv("LEPTON_HOME", str(home))
    return home


@pytest.fixture
def landing(lepton_home: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{lepton_home / 'landing'}")


@pytest.fixture
def artifacts(lepton_home: Path) -> ArtifactStore:
    return ArtifactStore(f"file://{lepton_home / 'artifacts'}")


@pytest.fixture
def seeded(landing: ArtifactStore) -> ArtifactStore:
    seed_landing(landing, days=7, end=DEMO_END)
    return landing


@pytest.fixture
def dataset_version(artifacts: ArtifactStore) -> str:
    """The digits as one validated day, built into a training dataset (the current one)."""
    artifacts.write_parquet("validated/2026-01-01.parquet", digits_frame())
    version, _ = build_dataset(
        artifacts, DIGITS_SPEC, [{"partition": "2026-01-01", "sha256": "test"}]
    )
    artifacts.write_json(current_key("training_dataset"), {"version": version})
    return version


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def instance(tmp_path: Path):
    """A real SQLite Dagster instance in a temporary DAGSTER_HOME."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        yield instance


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes, to prove a tree was left untouched."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def pytest_collection_finish(session: pytest.Session) -> None:
    """Under ``--dist loadgroup`` pytest-xdist keeps a group on one worker by the ``@group``
    it appends to each marked test's id; where that did not take (pytest 9.2 and later
    ignore it), tests that share a service would run at once: stop before any runs."""
    if not getattr(session.config.option, "loadgroup", False):
        return
    lost = [i.nodeid for i in session.items if i.get_closest_marker("xdist_group")]
    lost = [nodeid for nodeid in lost if "@" not in nodeid]
    if lost:
        raise pytest.UsageError(f"xdist_group marks were not applied (pytest-xdist and pytest "
                                f"disagree): {lost[:3]} ...")  # fmt: skip

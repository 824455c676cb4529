"""A number column's statistics fed file by file: exact while small, bounded past the limit."""

from typing import cast

import numpy as np
import polars as pl
import pytest

from lepton_core import data, sketch
from lepton_core.data import build_dataset, load_split, read_dataset_info
from lepton_core.sketch import CENTROIDS, NumberSketch
from lepton_core.store import ArtifactStore
from tests.test_streaming import SPEC, write_days

N = 100_000  # the values 0 .. N-1, fed in ten shuffled parts


def fed(parts: list[list[float | None]] | list[np.ndarray]) -> NumberSketch:
    numbers = NumberSketch()
    for part in parts:
        numbers.add(pl.Series(part, dtype=pl.Float64))
    return numbers


def shuffled_parts() -> list[np.ndarray]:
    values = np.random.default_rng(7).permutation(N).astype(float)
    return np.split(values, 10)


def test_small_columns_are_exact():
    numbers = fed([[1.0, 3.0], [8.0, None], []])
    assert numbers.statistics("median") == (3.0, 4.0, pytest.approx(3.605551, rel=1e-6))
    assert numbers.statistics("mean")[0] == 4.0
    summary = numbers.summary()
    assert summary is not None
    assert summary["bins"] == pytest.approx([1.4, 1.8, 2.2, 2.6, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert summary["shares"] == pytest.approx([1 / 3, 0, 0, 0, 0, 1 / 3, 0, 0, 0, 1 / 3])
    assert fed([[None]]).summary() is None and fed([]).statistics("median") == (0.0, 0.0, 1.0)


def test_past_the_limit_nothing_is_kept_and_the_figures_stay_close(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(sketch, "EXACT_LIMIT", 1000)
    numbers = fed(shuffled_parts())
    assert numbers.exact() is None and numbers.digest is not None
    assert numbers.digest.n_centroids <= CENTROIDS
    fill, mean, std = numbers.statistics("median")
    assert mean == pytest.approx(49_999.5, rel=1e-12)  # exact: merged moments
    assert std == pytest.approx((N * (N + 1) / 12) ** 0.5, rel=1e-12)
    assert abs(fill - 49_999.5) < 0.001 * N  # within 0.1% of the range
    summary = numbers.summary()
    assert summary is not None
    assert np.allclose(summary["bins"], np.arange(1, 10) * N / 10, atol=0.001 * N)
    assert np.allclose(summary["shares"], 0.1, atol=0.002)


def test_the_same_parts_give_the_same_figures(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(sketch, "EXACT_LIMIT", 1000)
    first, second = fed(shuffled_parts()), fed(shuffled_parts())
    assert first.statistics("median") == second.statistics("median")
    assert first.summary() == second.summary()


def test_a_dataset_past_the_limit_learns_close_statistics(
    artifacts: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(sketch, "EXACT_LIMIT", 100)
    monkeypatch.setattr(data, "ROW_GROUP_ROWS", 40)
    version, _ = build_dataset(artifacts, SPEC, write_days(artifacts, days=3, rows=400))
    numeric = read_dataset_info(artifacts, version)["preprocessing"]["numeric"]
    train = load_split(artifacts, version, "train")["x"]
    assert numeric["mean"][0] == pytest.approx(train.mean(), rel=1e-12)
    assert numeric["std"][0] == pytest.approx(train.std(), rel=1e-12)
    assert abs(numeric["fill"][0] - cast(float, train.median())) < 12  # 1% of the 1,200-value range

import polars as pl
import pytest

from lepton_assets.training import assign_splits, feature_stats, split_of


def test_split_of_is_a_pure_function_of_the_id():
    ids = [f"s-{i}" for i in range(2000)]
    assert [split_of(i) for i in ids] == [split_of(i) for i in ids]


def test_split_does_not_change_when_data_is_added():
    small = pl.DataFrame({"id": [f"s-{i}" for i in range(500)]})
    grown = pl.DataFrame({"id": [f"s-{i}" for i in range(5000, 8000)] + small["id"].to_list()})
    before = dict(assign_splits(small, "id").iter_rows())
    after = dict(assign_splits(grown, "id").iter_rows())
    assert all(after[k] == v for k, v in before.items())


def test_split_proportions_are_about_80_10_10():
    counts = pl.Series([split_of(f"s-{i}") for i in range(20000)]).value_counts()
    share = {row[0]: row[1] / 20000 for row in counts.iter_rows()}
    assert share["train"] == pytest.approx(0.8, abs=0.02)
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    assert share["test"] == pytest.approx(0.1, abs=0.01)


def test_feature_stats_come_from_the_frame_and_guard_constant_features():
    frame = pl.DataFrame({"a": [1.0, 3.0], "b": [5.0, 5.0]})
    stats = feature_stats(frame, ["a", "b"])
    assert stats["mean"] == [2.0, 5.0]
    assert stats["std"][0] == pytest.approx(1.41421, rel=1e-4)
    assert stats["std"][1] == 1.0


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    import numpy as np

    from lepton_assets.batch_checks import psi

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    assert psi(reference, rng.normal(0, 1, 5000)) < 0.02
    assert psi(reference, rng.normal(1.5, 1, 5000)) > 0.25
    assert psi(np.zeros(100), np.zeros(50)) == pytest.approx(0.0)

import polars as pl
import pytest
import torch

from lepton_core.data import (
    SPLIT_COLUMN,
    UNKNOWN,
    assign_splits,
    encode_categorical,
    encode_inputs,
    fit_preprocessing,
)
from lepton_core.spec import DatasetSpec

# Fixed expected splits, as the first (per-row hashlib) version assigned them: a change of
# the hash or of its reading would move samples between splits.
PINNED = {
    "s-0": "val", "s-1": "train", "s-2": "test", "s-3": "train", "s-4": "train",
    "s-5": "train", "s-6": "train", "s-16": "val", "s-18": "test", "s-19": "val",
    "s-32": "test", "s-37": "test", "s-40": "test", "s-42": "val", "s-49": "val",
    "digits-0000": "train", "digits-1796": "test", "é": "train", "日本": "train",
    " a": "train", "": "train",
}  # fmt: skip


def test_split_assignments_are_pinned():
    frame = assign_splits(pl.DataFrame({"id": list(PINNED)}), "id")
    assert dict(frame.iter_rows()) == PINNED


def test_split_does_not_change_when_data_is_added():
    small = pl.DataFrame({"id": [f"s-{i}" for i in range(500)]})
    grown = pl.DataFrame({"id": [f"s-{i}" for i in range(5000, 8000)] + small["id"].to_list()})
    before = dict(assign_splits(small, "id").iter_rows())
    after = dict(assign_splits(grown, "id").iter_rows())
    assert all(after[k] == v for k, v in before.items())


def test_split_proportions_are_about_80_10_10():
    ids = pl.DataFrame({"id": [f"s-{i}" for i in range(20000)]})
    counts = assign_splits(ids, "id")[SPLIT_COLUMN].value_counts()
    share = {row[0]: row[1] / 20000 for row in counts.iter_rows()}
    assert share["train"] == pytest.approx(0.8, abs=0.02)
    assert share["val"] == pytest.approx(0.1, abs=0.01)
    assert share["test"] == pytest.approx(0.1, abs=0.01)


SPEC = DatasetSpec(
    name="t",
    id_column="id",
    label_column="y",
    task="regression",
    feature_columns=["a", "b", "c"],
    categorical_columns=["city"],
    nullable_columns=["c", "city"],
)


def test_preprocessing_is_learned_from_the_frame_and_guards_constant_features():
    frame = pl.DataFrame(
        {
            "a": [1.0, 3.0, 8.0],
            "b": [5.0, 5.0, 5.0],
            "c": [None, 2.0, 4.0],
            "city": ["Oslo", None, "Bergen"],
            "y": [10.0, 20.0, 60.0],
        }
    )
    prep = fit_preprocessing(frame, SPEC)
    assert prep["target"] == {"mean": 30.0, "std": pytest.approx(26.45751, rel=1e-6)}
    assert prep["numeric"]["fill"] == [3.0, 5.0, 3.0]  # medians, nulls skipped
    assert prep["numeric"]["mean"] == [4.0, 5.0, 3.0]
    assert prep["numeric"]["std"][0] == pytest.approx(3.60555, rel=1e-4)
    assert prep["numeric"]["std"][1] == 1.0
    assert prep["categorical"] == {"city": ["Bergen", "Oslo"]}
    mean_spec = SPEC.model_copy(update={"impute": "mean"})
    assert fit_preprocessing(frame, mean_spec)["numeric"]["fill"] == [4.0, 5.0, 3.0]


def test_unseen_and_null_categories_go_to_the_unknown_bucket():
    frame = pl.DataFrame({"city": ["Oslo", "Tromsø", None, "Bergen"]})
    codes = encode_categorical(frame, ["city"], {"city": ["Bergen", "Oslo"]})
    assert codes.flatten().tolist() == [2, UNKNOWN, UNKNOWN, 1]


def test_numeric_inputs_are_float32_in_row_order_cast_through_float64():
    big = 2**60 + 2**36 + 1  # float32 straight from int64 would round up, to 2**60 + 2**37
    frame = pl.DataFrame({"n": [big, 2**24 + 1, -3], "x": [0.5, None, float("nan")]})
    spec = SPEC.model_copy(update={"feature_columns": ["n", "x"], "categorical_columns": []})
    (numeric,) = encode_inputs(frame, spec, {})
    assert numeric.dtype == torch.float32 and numeric.is_contiguous()
    assert numeric[:, 0].tolist() == [2.0**60, 2.0**24, -3.0]
    assert numeric[0, 1].item() == 0.5 and numeric[1:, 1].isnan().all()


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    import numpy as np

    from lepton_core.drift import psi

    rng = np.random.default_rng(0)
    reference = rng.normal(0, 1, 5000)
    assert psi(reference, rng.normal(0, 1, 5000)) < 0.02
    assert psi(reference, rng.normal(1.5, 1, 5000)) > 0.25
    assert psi(np.zeros(100), np.zeros(50)) == pytest.approx(0.0)

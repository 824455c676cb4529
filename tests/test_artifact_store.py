import os
from pathlib import Path

import polars as pl
import pytest

from lepton_core.registry import (
    POINTER_KEY,
    champion_history,
    current_champion,
    promote,
)
from lepton_core.store import ArtifactStore, sha256_bytes


@pytest.mark.parametrize("key", ["../x", "/etc/passwd", "a/../b", "a//b", "", "a\\b", "./a"])
def test_keys_that_could_escape_the_store_are_refused(tmp_path: Path, key: str):
    with pytest.raises(ValueError, match="invalid artifact key"):
        ArtifactStore(f"file://{tmp_path}").write_bytes(key, b"x")


def test_write_returns_the_content_hash_and_reads_back(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}")
    assert store.write_bytes("a/b.bin", b"hello") == sha256_bytes(b"hello")
    assert store.read_bytes("a/b.bin") == b"hello"
    assert store.sha256("a/b.bin") == sha256_bytes(b"hello")
    assert store.list("a") == ["a/b.bin"]


def test_same_frame_gives_byte_identical_parquet(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}")
    frame = pl.DataFrame({"x": [1.5, 2.5], "y": ["a", "b"]})
    assert store.write_parquet("one.parquet", frame) == store.write_parquet("two.parquet", frame)


def test_a_failed_write_leaves_the_old_artifact_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    store = ArtifactStore(f"file://{tmp_path}")
    store.write_bytes("p.json", b"old")

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.write_bytes("p.json", b"new")
    assert store.read_bytes("p.json") == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.json"]


def test_promotion_moves_the_pointer_and_appends_history(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}")
    assert current_champion(store) is None
    promote(store, {"model_prefix": "m/one"}, run_id="run-aaaaaaaa")
    promote(store, {"model_prefix": "m/two"}, run_id="run-bbbbbbbb")
    pointer = current_champion(store)
    assert pointer is not None
    assert pointer["model_prefix"] == "m/two" and pointer["previous"] == "m/one"
    assert [h["model_prefix"] for h in champion_history(store)] == ["m/one", "m/two"]
    assert store.read_json(POINTER_KEY) == pointer

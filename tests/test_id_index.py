"""The sample-id index on SQLite and on a real PostgreSQL, and its use by validation."""

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from lepton_core.id_index import CHUNK, IdIndex, redacted
from resources.artifact_store import ArtifactStoreResource

from .services import database_url
from .test_postgres import throwaway_db  # noqa: F401  (the fixture)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def index(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ids.sqlite'}"
    else:
        db = request.getfixturevalue("throwaway_db")
        url = database_url(db)
    made = IdIndex(url)
    yield made
    made.dispose()


def test_a_day_claims_its_ids_and_a_later_day_sees_them(index: IdIndex):
    assert index.claim("d1", ["a", "b", "c"], accept=True) == []
    assert index.claim("d2", ["c", "d", "a"], accept=True) == [("a", "d1"), ("c", "d1")]
    # d2 repeated ids, so it holds none; d1 is unchanged.
    assert index.days() == {"d1": 3}


def test_a_rerun_replaces_the_day_own_ids(index: IdIndex):
    index.claim("d1", ["a", "b"], accept=True)
    assert index.claim("d1", ["a", "b"], accept=True) == []
    assert index.claim("d1", ["b", "x"], accept=True) == []
    # "a" left d1 with the rerun, so another day may now use it.
    assert index.claim("d2", ["a"], accept=True) == []
    assert index.days() == {"d1": 2, "d2": 1}


def test_a_rejected_day_holds_no_ids_and_blocks_nobody(index: IdIndex):
    index.claim("d1", ["a"], accept=True)
    assert index.claim("d2", ["a", "b"], accept=True) == [("a", "d1")]
    assert index.claim("d3", ["q"], accept=False) == []
    assert index.claim("d1", ["a"], accept=True) == []  # d2's copy of "a" is not held
    assert index.claim("d4", ["b", "q"], accept=True) == []
    assert index.days() == {"d1": 1, "d4": 2}


def test_more_ids_than_one_statement_takes(index: IdIndex):
    ids = [f"id-{i:06d}" for i in range(CHUNK * 2 + 7)]
    assert index.claim("d1", ids, accept=True) == []
    clash = index.claim("d2", [ids[0], ids[CHUNK], ids[-1], "new"], accept=True)
    assert clash == [(ids[0], "d1"), (ids[CHUNK], "d1"), (ids[-1], "d1")]


def test_two_days_validated_at_once_cannot_both_take_an_id(index: IdIndex):
    results: dict[str, list] = {}
    barrier = threading.Barrier(2)

    def claim(day: str) -> None:
        other = IdIndex(index.url)
        barrier.wait()
        results[day] = other.claim(day, ["shared", f"own-{day}"], accept=True)
        other.dispose()

    threads = [threading.Thread(target=claim, args=(d,)) for d in ("d1", "d2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    held = index.days()
    assert sorted(held) in (["d1"], ["d2"])
    loser = "d2" if "d1" in held else "d1"
    assert results[loser] == [("shared", sorted(held)[0])]


def test_one_day_validated_twice_at_once_keeps_its_ids(index: IdIndex):
    barrier = threading.Barrier(2)
    results: list[list] = []

    def claim() -> None:
        other = IdIndex(index.url)
        barrier.wait()
        results.append(other.claim("d1", ["a", "b", "c"], accept=True))
        other.dispose()

    threads = [threading.Thread(target=claim) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [[], []]
    assert index.days() == {"d1": 3}


def test_a_password_never_appears_in_the_index_repr():
    assert "s3cret" not in redacted("postgresql://lepton:s3cret@db:5432/lepton")
    index = IdIndex("sqlite://")
    index.url = "postgresql://lepton:s3cret@db:5432/lepton"
    assert repr(index) == "IdIndex(postgresql://lepton:***@db:5432/lepton)"


def test_the_index_is_one_table_keyed_by_id(tmp_path: Path):
    index = IdIndex(f"sqlite:///{tmp_path / 'ids.sqlite'}")
    names = sa.inspect(index.engine).get_pk_constraint("lepton_ids")["constrained_columns"]
    assert names == ["id"]
    index.dispose()


def test_a_store_on_s3_needs_an_index_url(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("LEPTON_ID_INDEX_URL", raising=False)
    monkeypatch.setenv("LEPTON_ARTIFACTS_URI", "s3://bucket/artifacts")
    resource = ArtifactStoreResource()
    with pytest.raises(ValueError, match="set LEPTON_ID_INDEX_URL"):
        resource.get_id_index()
    monkeypatch.setenv("LEPTON_ID_INDEX_URL", "sqlite://")
    assert repr(resource.get_id_index()) == "IdIndex(sqlite://)"

"""The landing sensor on a real instance: one run per new or changed day, never twice."""

import io
import json
import os

import dagster as dg
import polars as pl
import pytest

from lepton_core.store import ArtifactStore
from resources.landing_zone import LandingZoneResource
from schedules.sensors import landing_sensor


def tick(instance: dg.DagsterInstance, landing_uri: str, cursor: str | None):
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"landing": LandingZoneResource()}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEPTON_LANDING_URI", landing_uri)
        result = landing_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result.run_requests or [], result.cursor


def csv_bytes(rows: int, offset: int = 0) -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"sample_id": [f"s{offset + i}" for i in range(rows)]}).write_csv(buf)
    return buf.getvalue()


def test_new_file_one_request_same_tick_none_changed_file_a_new_one(tmp_path, instance):
    landing = ArtifactStore(f"file://{tmp_path / 'landing'}")
    landing.write_bytes("2026-01-01/a.csv", csv_bytes(3))
    landing.write_bytes("2099-01-01/too-early.csv", csv_bytes(3))  # not a partition yet
    landing.write_bytes("notes/readme.csv", csv_bytes(1))  # not a day folder

    first, cursor = tick(instance, landing.uri, None)
    assert [(r.partition_key, (r.run_key or "")[:11]) for r in first] == [
        ("2026-01-01", "2026-01-01:")
    ]
    assert set(json.loads(cursor or "{}")) == {"2026-01-01/a.csv"}

    again, cursor2 = tick(instance, landing.uri, cursor)
    assert again == [] and cursor2 == cursor

    # The same bytes landed again (new mtime): hashed again, same content, no run.
    os.utime(landing.local_path("2026-01-01/a.csv"), (1, 1))
    relanded, cursor3 = tick(instance, landing.uri, cursor2)
    assert relanded == []

    landing.write_bytes("2026-01-01/a.csv", csv_bytes(4))
    changed, cursor4 = tick(instance, landing.uri, cursor3)
    assert [r.partition_key for r in changed] == ["2026-01-01"]
    assert changed[0].run_key != first[0].run_key

    landing.write_bytes("2026-01-02/b.csv", csv_bytes(2, offset=10))
    new_day, _ = tick(instance, landing.uri, cursor4)
    assert [r.partition_key for r in new_day] == ["2026-01-02"]


def test_a_lost_cursor_gives_the_same_run_keys(tmp_path, instance):
    landing = ArtifactStore(f"file://{tmp_path / 'landing'}")
    landing.write_bytes("2026-01-01/a.csv", csv_bytes(3))
    first, _ = tick(instance, landing.uri, None)
    again, _ = tick(instance, landing.uri, None)
    assert [r.run_key for r in again] == [r.run_key for r in first]


def test_a_tick_watches_only_the_newest_days_so_its_cost_does_not_grow(
    tmp_path, instance, monkeypatch
):
    landing = ArtifactStore(f"file://{tmp_path / 'landing'}")
    monkeypatch.setenv("LEPTON_LANDING_URI", landing.uri)
    days = [f"2026-01-{d:02d}" for d in range(1, 21)]
    for day in days:
        landing.write_bytes(f"{day}/a.csv", csv_bytes(2))
    context = dg.build_sensor_context(
        instance=instance,
        resources={"landing": LandingZoneResource(sensor_days=5)},
    )
    result = landing_sensor(context)
    assert isinstance(result, dg.SensorResult) and result.cursor is not None
    assert [r.partition_key for r in result.run_requests or []] == days[-5:]
    assert sorted(json.loads(result.cursor)) == [f"{day}/a.csv" for day in days[-5:]]

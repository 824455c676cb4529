"""The artifact store, the landing sensor and a whole pipeline run on S3, against a real
S3-compatible endpoint (moto's standalone server) started by these tests."""

import io
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import fsspec
import fsspec.config
import pytest

from lepton_assets.cli import main
from lepton_core.store import ArtifactStore, sha256_bytes

from .test_sensors import csv_bytes, tick

# One worker runs this module: the S3 endpoint starts once (module fixture).
pytestmark = pytest.mark.xdist_group("moto_s3")

BUCKET = "lepton-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on loopback; env and fsspec pointed at it (workers inherit the env)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            assert time.monotonic() < deadline, "moto server did not start"
            time.sleep(0.2)
    settings = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "FSSPEC_S3_ENDPOINT_URL": url,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    fsspec.config.conf.setdefault("s3", {})["endpoint_url"] = url  # env is read at import
    fsspec.filesystem("s3").mkdir(BUCKET)
    try:
        yield url
    finally:
        fsspec.config.conf["s3"].pop("endpoint_url", None)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.integration
def test_writes_are_single_objects_with_their_hash(s3_endpoint: str):
    store = ArtifactStore(f"s3://{BUCKET}/store-test")
    assert store.write_bytes("a/b.bin", b"one") == sha256_bytes(b"one")
    assert store.write_bytes("a/b.bin", b"two") == sha256_bytes(b"two")
    assert store.read_bytes("a/b.bin") == b"two" and store.sha256("a/b.bin") == sha256_bytes(b"two")
    store.write_json("a/c.json", {"x": 1})
    assert store.list("a") == ["a/b.bin", "a/c.json"]  # nothing temporary left behind
    assert store.read_json("a/c.json") == {"x": 1} and not store.exists("a/missing")
    with pytest.raises(ValueError, match="invalid artifact key"):
        store.write_bytes("../escape", b"x")


@pytest.mark.integration
def test_landing_sensor_on_s3(s3_endpoint: str, instance):
    landing = ArtifactStore(f"s3://{BUCKET}/sensor-landing")
    landing.write_bytes("2026-01-01/a.csv", csv_bytes(3))
    first, cursor = tick(instance, landing.uri, None)
    assert [r.partition_key for r in first] == ["2026-01-01"]
    assert tick(instance, landing.uri, cursor)[0] == []
    landing.write_bytes("2026-01-01/a.csv", csv_bytes(5))
    landing.write_bytes("2026-01-02/b.csv", csv_bytes(2, offset=9))
    changed, _ = tick(instance, landing.uri, cursor)
    assert sorted(r.partition_key or "" for r in changed) == ["2026-01-01", "2026-01-02"]


@pytest.mark.integration
@pytest.mark.slow
def test_the_whole_lifecycle_with_landing_and_artifacts_on_s3(
    s3_endpoint: str,
    lepton_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
):
    monkeypatch.setenv("DAGSTER_HOME", str(lepton_home / "dagster_home"))
    monkeypatch.setenv("LEPTON_LANDING_URI", f"s3://{BUCKET}/landing")
    monkeypatch.setenv("LEPTON_ARTIFACTS_URI", f"s3://{BUCKET}/artifacts")
    # With the store on S3 the id index needs a database of its own (PostgreSQL in
    # production; a SQLite file is enough for one machine).
    monkeypatch.setenv("LEPTON_ID_INDEX_URL", f"sqlite:///{lepton_home / 'ids.sqlite'}")
    assert main(["demo", "--days", "7", "--end", "2026-01-07"]) == 0
    assert f"; report s3://{BUCKET}/artifacts/reports/" in capsys.readouterr().out
    artifacts = ArtifactStore(f"s3://{BUCKET}/artifacts")
    pointer = artifacts.read_json("champion/current.json")
    assert artifacts.exists(f"{pointer['model_prefix']}/model.pt")
    report = artifacts.read_json("current/evaluation_report.json")["prefix"]
    assert artifacts.read_json(f"{report}/evaluation.json")["candidate"]["accuracy"] >= 0.95
    assert not (lepton_home / "artifacts").exists()  # nothing fell back to the local store
    assert (lepton_home / "ids.sqlite").exists()
    assert io.BytesIO(artifacts.read_bytes(f"{report}/report.html")).read(15) == b"<!doctype html>"

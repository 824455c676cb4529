"""``lepton serve``: real uvicorn processes on 127.0.0.1, driven as KServe v2 clients and
``/predict`` callers would drive them, with the load generator of ``tests/load.py``."""

import asyncio
import base64
import io
import json
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
import torch
from PIL import Image

from lepton_assets.cli import main
from lepton_core.data import dataset_description
from lepton_core.models import build_model, save_model
from lepton_core.predict import predict_frame
from lepton_core.registry import promote
from lepton_core.serving.batcher import Batcher, Overloaded
from lepton_core.serving.follower import ChampionFollower
from lepton_core.serving.model import Scored, version_of
from lepton_core.serving.sampler import FLUSH_ROWS, SAMPLES_PREFIX, Sampler
from lepton_core.spec import DatasetSpec, ImageSpec
from lepton_core.store import ArtifactStore
from tests.conftest import digits_model_info
from tests.load import (
    LoadResult,
    free_port,
    lepton_serve,
    run_load,
    spawn,
    start_server,
    stop_server,
    wait_ready,
)
from tests.services import wait_for

# One worker runs this module: its servers start once (module fixtures).
pytestmark = pytest.mark.xdist_group("servers")

TOKEN = "t0ken-for-the-serving-tests"
PII_KEY = "a-key-of-sixteen-bytes-or-more"
SHOP = DatasetSpec(
    name="shop",
    id_column="id",
    label_column="bought",
    classes=["no", "yes"],
    feature_columns=["price"],
    categorical_columns=["region", "email"],
    image=ImageSpec(column="photo", size=(8, 8), channels=1),
    pii={"email": "hash"},
)


def http(
    method: str, url: str, body: Any = None, token: str | None = None, raw: bytes | None = None
) -> tuple[int, Any]:
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as exc:
        text, status = exc.read().decode(), exc.code
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def ready(url: str) -> dict[str, Any]:
    return http("GET", f"{url}/v2/health/ready")[1]


def digits_rows(count: int) -> list[dict[str, float]]:
    values = torch.arange(count * 64).reshape(count, 64) % 17
    return [{f"pixel_{i:02d}": float(v) for i, v in enumerate(row)} for row in values.tolist()]


def png(value: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (8, 8), color=value).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def save_digits(store: ArtifactStore, name: str, seed: int, dtype: str = "float32") -> str:
    torch.manual_seed(seed)
    info = {**digits_model_info("mlp"), "dtype": dtype}
    save_model(store, f"models/{name}/fp32", build_model(info).to(getattr(torch, dtype)), info)
    return f"models/{name}/fp32"


@pytest.fixture(scope="module")
def digits_server(tmp_path_factory: pytest.TempPathFactory):
    """Two worker processes serving a digits MLP, champion v0 (v1, in bf16, beside it)."""
    root = tmp_path_factory.mktemp("digits")
    uri = f"file://{root}/artifacts"
    store = ArtifactStore(uri)
    prefixes = [save_digits(store, "digits-v0", 0), save_digits(store, "digits-v1", 1, "bfloat16")]
    promote(store, {"model_prefix": prefixes[0]}, "promote-v0")
    port = free_port()
    process = start_server(uri, port, "--workers", "2", "--poll-s", "0.3")
    yield f"http://127.0.0.1:{port}", store, prefixes
    stop_server(process)


@pytest.fixture(scope="module")
def shop_server(tmp_path_factory: pytest.TempPathFactory):
    """One worker serving a model with every kind of input (numeric, categorical, hashed
    personal data, an image), behind a token, with small limits and every request sampled."""
    root = tmp_path_factory.mktemp("shop")
    uri = f"file://{root}/artifacts"
    store = ArtifactStore(uri)
    preprocessing = {
        "numeric": {"columns": ["price"], "fill": [1.0], "mean": [0.0], "std": [1.0]},
        "categorical": {"region": ["east", "west"], "email": ["x"]},
    }
    info = {
        **digits_model_info("mlp"),
        "spec": SHOP.model_dump(),
        "preprocessing": preprocessing,
        "dataset_info": dataset_description(SHOP, preprocessing).model_dump(),
    }
    torch.manual_seed(0)
    save_model(store, "models/shop-v0/fp32", build_model(info), info)
    promote(store, {"model_prefix": "models/shop-v0/fp32"}, "promote-shop")
    port = free_port()
    env = {
        "LEPTON_SERVE_TOKEN": TOKEN,
        "LEPTON_PII_KEY": PII_KEY,
        "LEPTON_SERVE_MAX_BODY_BYTES": "4096",
        "LEPTON_SERVE_MAX_REQUEST_ROWS": "8",
        "LEPTON_SERVE_BODY_TIMEOUT_S": "1",
    }
    process = start_server(uri, port, "--workers", "1", "--sample-rate", "1", env=env)
    yield f"http://127.0.0.1:{port}", store, process
    stop_server(process)


@pytest.mark.slow
def test_the_open_inference_protocol_answers_as_kserve_v2_clients_expect(digits_server) -> None:
    url, store, prefixes = digits_server
    assert http("GET", f"{url}/v2/health/live") == (200, {"live": True})
    status, ready = http("GET", f"{url}/v2/health/ready")
    assert status == 200 and ready["version"] == "digits-v0.fp32" and ready["ready"] is True
    status, meta = http("GET", f"{url}/v2/models/digits")
    assert status == 200 and meta["name"] == "digits" and meta["versions"] == ["digits-v0.fp32"]
    assert meta["inputs"][0] == {"name": "pixel_00", "datatype": "FP64", "shape": [-1]}
    assert len(meta["inputs"]) == 64
    assert meta["outputs"] == [
        {"name": "label", "datatype": "INT64", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
    ]
    assert http("GET", f"{url}/v2/models/digits/versions/digits-v0.fp32/ready")[0] == 200
    assert http("GET", f"{url}/v2/models/digits/versions/nope/ready")[0] == 404
    rows = digits_rows(3)
    request = {  # as tritonclient / kserve's InferRequest serialize it
        "id": "req-1",
        "inputs": [
            {"name": n, "shape": [3, 1], "datatype": "FP32", "data": [[r[n]] for r in rows]}
            for n in rows[0]
        ],
    }
    status, answer = http("POST", f"{url}/v2/models/digits/versions/digits-v0.fp32/infer", request)
    assert status == 200, answer
    assert answer["id"] == "req-1" and answer["model_version"] == "digits-v0.fp32"
    label, probabilities = answer["outputs"]
    assert label["name"] == "label" and label["shape"] == [3]
    assert probabilities["shape"] == [3, 10] and len(probabilities["data"]) == 30
    # the same rows through /predict and through `lepton predict` score the same
    status, plain = http("POST", f"{url}/predict", {"rows": rows})
    assert status == 200 and plain["predictions"] == label["data"]
    batch, model = predict_frame(store, pl.DataFrame(rows))
    assert model == prefixes[0] and batch["prediction"].to_list() == label["data"]
    expected = torch.tensor(probabilities["data"]).reshape(3, 10)
    assert torch.allclose(torch.tensor(plain["probabilities"]), expected, atol=1e-6)
    assert torch.allclose(torch.tensor(batch["confidence"]), expected.max(1).values, atol=1e-6)
    metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert 'lepton_requests_total{code="200",endpoint="infer",version="digits-v0.fp32"}' in metrics
    assert "lepton_batch_rows_bucket" in metrics and "lepton_queue_seconds_bucket" in metrics
    assert "lepton_compute_seconds_bucket" in metrics


def load_with_swaps(
    url: str, store: ArtifactStore, prefixes: list[str], clients: int, requests: int
) -> LoadResult:
    """``requests`` to /predict while the champion is promoted 3 times, a quarter of the
    requests apart, between the two versions: every request answered, by both versions."""
    bodies = [json.dumps({"rows": [row]}).encode() for row in digits_rows(16)]
    swaps = {
        requests * i // 4: lambda i=i: promote(store, {"model_prefix": prefixes[i % 2]}, f"{i}")
        for i in range(1, 4)
    }
    result = run_load(f"{url}/predict", bodies, clients, requests, 120, read_version=True,
                      events=swaps)  # fmt: skip
    print(result.line(), dict(result.versions))
    assert result.requests == requests and result.failed == 0, (result.statuses, result.errors)
    assert set(result.versions) == {version_of(p) for p in prefixes}
    return result


@pytest.mark.slow
def test_promotions_swap_under_load_with_no_failed_request(digits_server) -> None:
    """10,000 requests at 64 clients across 3 promotions, then a promotion of a model that
    cannot load: the old version keeps serving and readiness says why."""
    url, store, prefixes = digits_server
    result = load_with_swaps(url, store, prefixes, 64, 10_000)
    assert result.throughput >= 50
    wait_for(lambda: ready(url)["version"] == "digits-v1.fp32", 30, "the last promotion served")

    broken = "models/digits-broken/fp32"
    store.write_json(f"{broken}/model.json", store.read_json(f"{prefixes[0]}/model.json"))
    store.write_bytes(f"{broken}/model.pt", b"not a state dict")
    promote(store, {"model_prefix": broken}, "promote-broken")
    wait_for(lambda: (ready(url).get("last_load_error") or {}).get("model") == broken, 30,
             "the broken model's load to fail")  # fmt: skip
    status, answer = http("GET", f"{url}/v2/health/ready")
    assert status == 200 and answer["version"] == "digits-v1.fp32"
    assert http("POST", f"{url}/predict", {"rows": digits_rows(1)})[1]["model_version"] == (
        "digits-v1.fp32"
    )
    metrics = urllib.request.urlopen(f"{url}/metrics").read().decode()
    assert 'lepton_model_loads_total{outcome="failed"}' in metrics
    promote(store, {"model_prefix": prefixes[0]}, "promote-v0-again")


@pytest.mark.slow
def test_two_replicas_behind_haproxy_swap_under_load_without_failures(tmp_path: Path) -> None:
    """The deployment of deploy/: replicas on Unix sockets, HAProxy configured by
    deploy/haproxy.sh in front; 3 promotions under load, every request answered; each replica
    records the version it serves (the served_traffic asset shows them)."""
    uri = f"file://{tmp_path}/artifacts"
    store = ArtifactStore(uri)
    prefixes = [save_digits(store, f"digits-v{i}", i) for i in range(2)]
    promote(store, {"model_prefix": prefixes[0]}, "promote-v0")
    sockets = Path(tempfile.mkdtemp(prefix="lsv-"))  # a socket path must stay short
    port = free_port()
    config = tmp_path / "haproxy.cfg"
    script = Path(__file__).resolve().parents[1] / "deploy" / "haproxy.sh"
    config.write_text(subprocess.run([str(script), "2", str(sockets), str(port)], check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    processes = [
        lepton_serve(uri, "--uds", str(sockets / f"serve-{i}.sock"), "--workers", "1",
                     "--poll-s", "0.3", env={"LEPTON_SERVE_REPLICA": f"replica-{i}"})
        for i in (1, 2)
    ]  # fmt: skip
    processes.append(spawn(["haproxy", "-db", "-f", str(config)]))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, processes, times=20)
        load_with_swaps(url, store, prefixes, 32, 4000)
        expected = {
            "serving/replicas/replica-1.json": "digits-v1.fp32",
            "serving/replicas/replica-2.json": "digits-v1.fp32",
        }

        def replicas() -> dict[str, str]:
            return {k: store.read_json(k)["version"] for k in store.list("serving/replicas")}

        wait_for(lambda: replicas() == expected, 30, "both replicas to record digits-v1")
    finally:
        for process in processes:
            stop_server(process)
        shutil.rmtree(sockets, ignore_errors=True)


def shop_row(**changes: Any) -> dict[str, Any]:
    return {"price": 3.5, "region": "east", "email": "a@b.c", "photo": png(128), **changes}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        (b'{"rows": [', 400, "malformed JSON"),
        (b'{"rows": [{"price": NaN}]}', 400, "NaN is not JSON"),
        ({"rows": [shop_row(price="cheap")]}, 400, "parse(price: Float64)"),
        ({"rows": [shop_row(price="NaN")]}, 400, "not_nan(price)"),
        ({"rows": [shop_row(price=True)]}, 400, "parse(price: Float64)"),
        ({"rows": [shop_row(region=None)]}, 400, "not_null(region)"),
        ({"rows": [shop_row(region=["a"])]}, 400, "region: expected a number, text or null"),
        ({"rows": [shop_row(colour="red")]}, 400, "unknown features ['colour']"),
        ({"rows": [{"price": 1.0, "email": "x", "photo": png(0)}]}, 400, "missing features"),
        ({"rows": [shop_row(photo="bm90IGFuIGltYWdl")]}, 400, "image(photo): row 0"),
        ({"rows": [shop_row(photo="%%%")]}, 400, "not base64"),
        ({"rows": [shop_row()] * 9}, 413, "9 rows in one request; the limit is 8"),
        ({"rows": [shop_row(email="x" * 5000)]}, 413, "over the limit of 4096"),
        ({"rows": []}, 400, "at least one row"),
        ({"inputs": [{"name": "price", "shape": [2], "datatype": "FP64", "data": [1.0]}]}, 400,
         "input price: shape [2] holds 2 values, data has 1"),
        ({"inputs": [{"name": "price", "shape": [1], "datatype": "FP64", "data": ["1"]}]}, 400,
         "input price: row 0: datatype FP64 expects int/float, got '1'"),
        ({"inputs": [{"name": "price", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
         400, "shape must be [B] or [B, 1]"),
    ],
)  # fmt: skip
def test_bad_input_gets_a_4xx_naming_the_field(shop_server, body, status, names) -> None:
    url, _, _ = shop_server
    path = "/v2/models/shop/infer" if isinstance(body, dict) and "inputs" in body else "/predict"
    raw = body if isinstance(body, bytes) else None
    got, answer = http("POST", url + path, None if raw else body, TOKEN, raw)
    assert got == status, answer
    assert names in answer["error"]


@pytest.mark.slow
def test_the_token_guards_all_but_health_and_the_server_keeps_serving(shop_server) -> None:
    url, store, _ = shop_server
    assert http("POST", f"{url}/predict", {"rows": [shop_row()]})[0] == 401
    assert http("POST", f"{url}/predict", {"rows": [shop_row()]}, "wrong")[0] == 401
    assert http("GET", f"{url}/metrics", token="wrong")[0] == 401
    assert http("GET", f"{url}/v2/health/ready")[0] == 200
    status, answer = http("POST", f"{url}/predict", {"rows": [shop_row(), shop_row()]}, TOKEN)
    assert status == 200 and answer["model_version"] == "shop-v0.fp32"
    assert all(label in ("no", "yes") for label in answer["predictions"])


@pytest.mark.slow
def test_a_slow_client_is_cut_off_without_holding_the_worker(shop_server) -> None:
    url, _, _ = shop_server
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Length: 500\r\n\r\n".encode()
            + b'{"rows": ['
        )
        status, _ = http("POST", f"{url}/predict", {"rows": [shop_row()]}, TOKEN)
        # Served while the slow client still holds its connection: its 408 has not come yet.
        assert status == 200 and select.select([slow], [], [], 0)[0] == []
        answer = b""
        while b"body not received" not in answer:  # headers and body may come apart
            chunk = slow.recv(4096)  # bounded by the socket's 10 s timeout
            if not chunk:
                break
            answer += chunk
    text = answer.decode()
    assert text.startswith("HTTP/1.1 408") and "body not received within 1.0 s" in text


@pytest.mark.slow
def test_served_traffic_is_sampled_with_personal_data_hashed(shop_server) -> None:
    url, store, process = shop_server
    for region in ("east", "west", "north"):
        assert http("POST", f"{url}/predict", {"rows": [shop_row(region=region)]}, TOKEN)[0] == 200
    stop_server(process)  # a stopping server writes what it sampled
    files = [k for k in store.files("serving/samples") if k.endswith(".parquet")]
    frame = pl.concat([store.read_parquet(k) for k in files], how="diagonal_relaxed")
    assert {"north", "west", "east"} <= set(frame["region"].to_list())
    assert "a@b.c" not in frame["email"].to_list() and len(frame["email"][0]) == 64
    assert {"prediction", "confidence", "model_version", "served_at"} <= set(frame.columns)
    assert "photo" not in frame.columns and frame["_image_pixels"][0] == bytes([128] * 64)
    assert all(Path(k).parent.name.isdigit() for k in files)  # hourly partitions


class GatedModel:
    """Stands in for a ServedModel in the batcher: records batch sizes; a forward starts
    (``entered``) and then waits until the test opens the gate (``release``)."""

    version = "gated"

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.batches: list[int] = []

    def score(self, frames: list[pl.DataFrame]) -> list[Any]:
        self.entered.set()
        assert self.release.wait(30), "the test never opened the gate"
        self.batches.append(sum(f.height for f in frames))
        return [f.height for f in frames]


def test_the_batcher_fills_batches_drops_timed_out_requests_and_refuses_overload() -> None:
    async def scenario() -> None:
        model = GatedModel()
        batcher = Batcher(max_batch=4, max_delay_s=0.002, max_queue_rows=6)
        batcher.start()
        loop = asyncio.get_running_loop()
        row = pl.DataFrame({"x": ["1"]})
        first = asyncio.ensure_future(batcher.score(model, row))  # type: ignore[arg-type]
        assert await loop.run_in_executor(None, model.entered.wait, 30)  # its forward runs
        waiting = [asyncio.ensure_future(batcher.score(model, row)) for _ in range(5)]  # type: ignore[arg-type]
        await asyncio.sleep(0)  # each has queued its row
        assert batcher.queued_rows == 5
        with pytest.raises(Overloaded):
            await batcher.score(model, pl.DataFrame({"x": ["1", "2"]}))  # type: ignore[arg-type]
        with pytest.raises(TimeoutError):  # gives up while its batch waits behind the gate
            await asyncio.wait_for(waiting[4], 0.02)
        model.release.set()
        assert await first == 1 and [await w for w in waiting[:4]] == [1, 1, 1, 1]
        assert model.batches == [1, 4]  # the four live requests in one forward, the 5th dropped
        await batcher.stop()

    asyncio.run(scenario())


def test_serve_refuses_an_outside_address_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LEPTON_SERVE_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 1
    error = capsys.readouterr().err
    assert "--host 0.0.0.0 reaches beyond this machine: set LEPTON_SERVE_TOKEN" in error


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_model_that_failed_to_load_is_tried_again_after_the_retry_window(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}")
    for name in ("a", "b"):
        save_digits(store, name, 0)
    promote(store, {"model_prefix": "models/a/fp32"}, "promote-a")
    tried: list[str] = []

    def failing_load(prefix: str, files: dict[str, str] | None) -> Any:
        tried.append(prefix)
        raise OSError(f"cannot read {prefix}")

    clock = Clock()
    follower = ChampionFollower(store, failing_load, retry_s=60.0, clock=clock)
    follower.check()
    follower.check()  # within the window: not tried again
    clock.now += 59.9
    follower.check()
    assert tried == ["models/a/fp32"]
    assert follower.last_error is not None and follower.last_error["model"] == "models/a/fp32"
    assert follower.last_error["error"] == "OSError: cannot read models/a/fp32"
    clock.now += 0.2  # the window has passed
    follower.check()
    assert tried == ["models/a/fp32"] * 2
    promote(store, {"model_prefix": "models/b/fp32"}, "promote-b")  # a new pointer: at once
    follower.check()
    assert tried == ["models/a/fp32"] * 2 + ["models/b/fp32"]
    assert follower.current is None  # nothing loaded, nothing swapped in


def test_sampled_rows_are_written_after_a_minute_or_a_thousand_rows(tmp_path: Path):
    store = ArtifactStore(f"file://{tmp_path}")
    clock = Clock()
    sampler = Sampler(store, 1.0, replica="r1", clock=clock)
    served = SimpleNamespace(spec=DatasetSpec(name="t", id_column="id", label_column="y",
                                              feature_columns=["x"], classes=["a", "b"]),
                             version="t-v0.fp32")  # fmt: skip

    def add(rows: int) -> None:
        frame = pl.DataFrame({"x": [1.0] * rows})
        sampler.add(served, Scored(["a"] * rows, [[0.25, 0.75]] * rows, frame))  # type: ignore[arg-type]

    def written() -> list[int]:
        return [store.read_parquet(k).height for k in sorted(store.files(SAMPLES_PREFIX))]

    add(3)
    clock.now += 59.9
    add(2)
    assert written() == []  # under a minute and under FLUSH_ROWS rows: still waiting
    clock.now += 0.1
    add(1)  # a minute after the last flush: the six rows go out as one file
    assert written() == [6]
    add(FLUSH_ROWS - 1)
    assert written() == [6]
    add(1)  # the thousandth row flushes at once
    assert sorted(written()) == [6, FLUSH_ROWS]
    frame = pl.concat([store.read_parquet(k) for k in store.files(SAMPLES_PREFIX)])
    assert set(frame["confidence"].to_list()) == {0.75} and frame["prediction"][0] == "a"

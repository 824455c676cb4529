"""The server under load, side by side in one run, on this machine (127.0.0.1 only).

    .venv/bin/python bench/serve_bench.py [--seconds 8] [--swap-requests 10000]

Two servers on the same stack (``lepton serve``: Starlette on uvicorn), same model:
  naive    one process, one request one forward (--workers 1 --max-batch 1 --max-delay-ms 0,
           torch on every core);
  batched  dynamic batching and a worker process per core (--workers <cores> --threads 1
           --max-batch 64 --max-delay-ms 2).
Models: a 2048-wide MLP on the digits' 64 features (4.3M parameters: its batch-1 forward
costs more than handling the request) and the demo's digits CNN. The load generator
(tests/load.py, aiohttp) runs closed-loop clients at 1, 8 and 64 concurrent clients for
``--seconds`` each and prints throughput, p50, p99 and failed requests; then the ratio of the
two servers at 64 clients (goal on the MLP: >= 5x) and at 1 client the p50 difference (goal:
at most the queue delay + 1 ms).

Then the demo CNN exported to ONNX (``lepton export``'s checks printed) and served on
onnxruntime against eager PyTorch, both batched.

The swap run: ``--swap-requests`` requests at 64 clients against the batched server while the
champion is promoted 3 times (goal: 0 non-2xx). Weights are random: serving cost does not
depend on their values.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' load generator
from lepton_assets.demo import digits_frame  # noqa: E402
from lepton_core.data import build_dataset  # noqa: E402
from lepton_core.edge import export_onnx  # noqa: E402
from lepton_core.models import build_model, save_model  # noqa: E402
from lepton_core.registry import promote  # noqa: E402
from lepton_core.spec import DIGITS_SPEC  # noqa: E402
from lepton_core.store import ArtifactStore  # noqa: E402
from tests.conftest import digits_model_info  # noqa: E402
from tests.load import LoadResult, free_port, run_load, start_server, stop_server  # noqa: E402

CORES = os.cpu_count() or 1
NAIVE = ["--workers", "1", "--threads", str(CORES), "--max-batch", "1", "--max-delay-ms", "0"]
BATCHED = ["--workers", str(CORES), "--threads", "1", "--max-batch", "64", "--max-delay-ms", "2"]
CLIENTS = (1, 8, 64)


def make_models(store: ArtifactStore) -> dict[str, list[str]]:
    """Two versions of each model (for the swaps), saved as training saves them, on a digits
    dataset version (its test split is what the ONNX export is checked on)."""
    store.write_parquet("validated/2026-01-01.parquet", digits_frame())
    version, _ = build_dataset(store, DIGITS_SPEC, [{"partition": "2026-01-01", "sha256": "b"}])
    models = {
        "mlp-2048": digits_model_info("mlp", widths=[2048, 2048]),
        "demo-cnn": digits_model_info("cnn"),
    }
    prefixes: dict[str, list[str]] = {}
    for name, info in models.items():
        prefixes[name] = []
        for seed in range(2):
            torch.manual_seed(seed)
            prefix = f"models/{name}-{seed}/fp32"
            info = {**info, "dataset_version": version}
            save_model(store, prefix, build_model(info), info)
            prefixes[name].append(prefix)
    return prefixes


def bodies(count: int = 32) -> list[bytes]:
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 17, (count, 64), generator=generator).tolist()
    return [
        json.dumps({"rows": [{f"pixel_{i:02d}": v for i, v in enumerate(row)}]}).encode()
        for row in rows
    ]


def serve_load(uri: str, server: list[str], seconds: float) -> list[LoadResult]:
    port = free_port()
    process = start_server(uri, port, *server)
    try:
        url = f"http://127.0.0.1:{port}/predict"
        run_load(url, bodies(), 8, 400, 5)  # warm-up
        return [run_load(url, bodies(), c, 10**9, seconds) for c in CLIENTS]
    finally:
        stop_server(process)


def compare(uri: str, store: ArtifactStore, name: str, prefix: str, seconds: float) -> None:
    promote(store, {"model_prefix": prefix}, f"bench-{name}")
    print(f"\n== {name} ==")
    results = {}
    for label, server in (("naive", NAIVE), ("batched", BATCHED)):
        results[label] = serve_load(uri, server, seconds)
        for r in results[label]:
            print(f"{label:8s} {r.line()}")
    naive, batched = results["naive"], results["batched"]
    print(
        f"{name}: throughput ratio at 64 clients (batched/naive): "
        f"{batched[-1].throughput / naive[-1].throughput:.1f}x"
    )
    print(
        f"{name}: p50 at 1 client: naive {1000 * naive[0].percentile(50):.2f} ms, batched "
        f"{1000 * batched[0].percentile(50):.2f} ms (difference "
        f"{1000 * (batched[0].percentile(50) - naive[0].percentile(50)):+.2f} ms; allowed 3 ms)"
    )


def onnx_against_torch(uri: str, store: ArtifactStore, prefix: str, seconds: float) -> None:
    """The same model, exported to ONNX, on onnxruntime against eager PyTorch, both batched."""
    promote(store, {"model_prefix": prefix}, "bench-onnx")
    checks = export_onnx(store, prefix)["checks"]
    print(f"\n== {prefix}: onnxruntime against eager PyTorch (batched server) ==\n"
          f"export checks: {checks}")  # fmt: skip
    results = {}
    for runtime in ("torch", "onnx"):
        results[runtime] = serve_load(uri, [*BATCHED, "--runtime", runtime], seconds)
        for r in results[runtime]:
            print(f"{runtime:8s} {r.line()}")
    print(f"onnx/torch throughput at 64 clients: "
          f"{results['onnx'][-1].throughput / results['torch'][-1].throughput:.2f}x, p50 at 1 "
          f"client: {1000 * results['onnx'][0].percentile(50):.2f} ms against "
          f"{1000 * results['torch'][0].percentile(50):.2f} ms")  # fmt: skip


def swap_run(uri: str, store: ArtifactStore, prefixes: list[str], requests: int) -> None:
    promote(store, {"model_prefix": prefixes[0]}, "bench-swap-0")
    port = free_port()
    process = start_server(uri, port, *BATCHED, "--poll-s", "0.5")
    promoted: list[str] = []

    def swap(i: int) -> None:
        promote(store, {"model_prefix": prefixes[i % 2]}, f"swap-{i}")
        promoted.append(prefixes[i % 2])

    # 3 promotions, a quarter of the requests apart
    swaps = {requests * i // 4: lambda i=i: swap(i) for i in range(1, 4)}
    try:
        result = run_load(f"http://127.0.0.1:{port}/predict", bodies(), 64, requests, 300,
                          read_version=True, events=swaps)  # fmt: skip
    finally:
        stop_server(process)
    print(f"\n== swap run: {requests} requests, 3 promotions ==\n{result.line()}")
    print(
        f"statuses {dict(result.statuses)}, connection errors {dict(result.errors)}, "
        f"answers by version {dict(result.versions)}, promotions {len(promoted)}"
    )
    print(
        f"swap run: {result.failed} non-2xx of {result.requests} at {result.throughput:.0f} req/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--swap-requests", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"file://{tmp}/artifacts"
        store = ArtifactStore(uri)
        prefixes = make_models(store)
        print(f"{CORES} cores; torch {torch.__version__}")
        for name, versions in prefixes.items():
            compare(uri, store, name, versions[0], args.seconds)
        onnx_against_torch(uri, store, prefixes["demo-cnn"][0], args.seconds)
        swap_run(uri, store, prefixes["mlp-2048"], args.swap_requests)


if __name__ == "__main__":
    main()

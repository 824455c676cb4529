"""A load generator for the server (the serving tests and bench/serve_bench.py use it): an
asyncio client (aiohttp) with N concurrent clients, each sending its next request when the
last one is answered (closed loop), over kept-alive connections.

Bounded by design: it stops after ``requests`` requests or ``max_seconds``, whichever comes
first, and refuses any address but 127.0.0.0/8. Not a test module.
"""

import asyncio
import ipaddress
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp


@dataclass
class LoadResult:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    errors: Counter = field(default_factory=Counter)  # connection errors, by exception type

    @property
    def requests(self) -> int:
        return sum(self.statuses.values()) + sum(self.errors.values())

    @property
    def failed(self) -> int:
        """Non-2xx answers and requests that got no answer."""
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300) + sum(
            self.errors.values()
        )

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        if len(self.latencies) < 2:
            return self.latencies[0] if self.latencies else float("nan")
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1]

    def line(self) -> str:
        return (
            f"{self.clients:3d} clients: {self.requests:6d} requests in {self.seconds:5.1f} s, "
            f"{self.throughput:7.1f} req/s, p50 {1000 * self.percentile(50):6.2f} ms, "
            f"p99 {1000 * self.percentile(99):6.2f} ms, failed {self.failed}"
        )


def check_local(url: str) -> None:
    host = urlparse(url).hostname or ""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"load goes to 127.0.0.0/8 only, not {host}")


async def _client(
    session: aiohttp.ClientSession,
    url: str,
    bodies: list[bytes],
    result: LoadResult,
    budget: list[int],
    stop_at: float,
    read_version: bool,
    events: list[tuple[int, Callable[[], object]]],
) -> None:
    i = 0
    while budget[0] > 0 and time.perf_counter() < stop_at:
        budget[0] -= 1
        if events and result.requests >= events[0][0]:
            events.pop(0)[1]()
        body = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        try:
            async with session.post(url, data=body) as response:
                payload = await response.read()
                result.statuses[response.status] += 1
                if read_version and response.status == 200:
                    result.versions[json.loads(payload)["model_version"]] += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            result.errors[type(exc).__name__] += 1
            continue
        result.latencies.append(time.perf_counter() - started)


async def load(
    url: str,
    bodies: list[bytes],
    clients: int,
    requests: int,
    max_seconds: float,
    headers: dict[str, str] | None = None,
    read_version: bool = False,
    events: Mapping[int, Callable[[], object]] | None = None,
) -> LoadResult:
    """Closed-loop load; ``events[n]`` runs once, when n requests have been answered."""
    check_local(url)
    result = LoadResult(clients)
    connector = aiohttp.TCPConnector(limit=clients, force_close=False)
    timeout = aiohttp.ClientTimeout(total=30)
    base = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=base) as session:
        budget = [requests]
        pending = sorted((events or {}).items())  # shared by the clients
        started = time.perf_counter()
        stop_at = started + max_seconds
        await asyncio.gather(
            *(
                _client(
                    session,
                    url,
                    bodies[k:] + bodies[:k],
                    result,
                    budget,
                    stop_at,
                    read_version,
                    pending,
                )
                for k in range(clients)
            )
        )
        result.seconds = time.perf_counter() - started
    return result


def run_load(*args: Any, **kwargs: Any) -> LoadResult:
    """``load``, from synchronous code."""
    return asyncio.run(load(*args, **kwargs))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(command: list[str], env: dict[str, str] | None = None):
    """A process in its own process group (``stop_server`` ends the whole group)."""
    import os
    import subprocess

    full_env = {**os.environ, **(env or {})}
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return subprocess.Popen(command, env=full_env, start_new_session=True)


def wait_ready(url: str, processes: list, seconds: float = 60, times: int = 1) -> None:
    """Until ``url``/v2/health/ready answers 200 ``times`` times in a row."""
    import urllib.request

    deadline, ok = time.monotonic() + seconds, 0
    while ok < times:
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            for p in processes:
                stop_server(p)
            raise RuntimeError(f"{url} was not ready within {seconds} s")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1):
                ok += 1
        except OSError:
            ok = 0
            time.sleep(0.2)


def lepton_serve(artifacts_uri: str, *args: str, env: dict[str, str] | None = None):
    import sys
    from pathlib import Path

    lepton = Path(sys.executable).with_name("lepton")
    env = {"LEPTON_ARTIFACTS_URI": artifacts_uri, **(env or {})}
    return spawn([str(lepton), "serve", "--log-level", "warning", *args], env)


def start_server(artifacts_uri: str, port: int, *args: str, env: dict[str, str] | None = None):
    """``lepton serve`` on 127.0.0.1:``port`` in its own process group, once it is ready."""
    process = lepton_serve(artifacts_uri, "--port", str(port), *args, env=env)
    wait_ready(f"http://127.0.0.1:{port}", [process])
    return process


def stop_server(process) -> None:
    import os
    import signal
    import subprocess

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def served_predictions(artifacts_uri: str, rows: list[dict], *args: str, env=None) -> dict:
    """Start ``lepton serve`` (one worker) on the store, POST ``rows`` to /predict, stop it;
    the answer."""
    import urllib.request

    port = free_port()
    process = start_server(artifacts_uri, port, "--workers", "1", *args, env=env)
    try:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=json.dumps({"rows": rows}).encode(),
            headers={"Content-Type": "application/json"}, method="POST",
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    finally:
        stop_server(process)

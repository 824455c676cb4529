"""Prometheus metrics of the server (``GET /metrics``).

With several worker processes each process counts its own, in files under
``PROMETHEUS_MULTIPROC_DIR`` (``lepton serve`` makes one), and ``/metrics`` adds them up
(prometheus-client's multiprocess mode), so one scrape sees the whole server.
"""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "lepton_requests",
    "Requests answered, by endpoint, model version and status code",
    ["endpoint", "version", "code"],
)
ERRORS = Counter("lepton_request_errors", "Requests refused or failed, by kind of error", ["kind"])
LATENCY = Histogram(
    "lepton_request_seconds",
    "Time from a request's arrival to its answer, by model version",
    ["version"],
    buckets=LATENCY_BUCKETS,
)
QUEUE = Histogram(
    "lepton_queue_seconds", "Time a request waited for its batch", buckets=LATENCY_BUCKETS
)
COMPUTE = Histogram(
    "lepton_compute_seconds",
    "Time of one batch's forward, by model version",
    ["version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_ROWS = Histogram("lepton_batch_rows", "Rows in one forward", buckets=ROW_BUCKETS)
LOADS = Counter("lepton_model_loads", "Model versions loaded, by outcome (ok, failed)", ["outcome"])
SERVING = Gauge(
    "lepton_model_serving",
    "1 for the model version a worker serves",
    ["version"],
    multiprocess_mode="livemax",
)


def exposition() -> tuple[bytes, str]:
    """The metrics text, summed over worker processes when there are several."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST

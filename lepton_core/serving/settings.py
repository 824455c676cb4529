"""The server's settings, one place for their defaults: ``lepton serve``'s options and the
``LEPTON_SERVE_<NAME>`` variables each worker process reads (imports nothing heavy, so the
CLI can read the defaults without loading torch)."""

import os
from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """Every setting, from ``LEPTON_SERVE_<NAME>`` (the store from ``LEPTON_ARTIFACTS_URI``)."""

    artifacts_uri: str
    max_batch: int = 64  # rows in one forward
    max_delay_ms: float = 2.0  # longest wait for a batch to fill
    max_request_rows: int = 1024
    max_queue_rows: int = 8192
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout_s: float = 5.0
    timeout_s: float = 10.0
    poll_s: float = 1.0
    runtime: str = "torch"  # or onnx
    threads: int = 1  # torch threads per worker process
    sample_rate: float = 0.0  # share of served requests written for monitoring
    replica: str = "local"

    @classmethod
    def from_env(cls) -> "ServeSettings":
        values: dict[str, Any] = {"artifacts_uri": os.environ["LEPTON_ARTIFACTS_URI"]}
        for f in fields(cls):
            raw = os.environ.get(f"LEPTON_SERVE_{f.name.upper()}")
            if raw is not None and f.name != "artifacts_uri":
                kind = type(getattr(cls, f.name))
                values[f.name] = kind(raw)
        return cls(**values)

"""A sample of served traffic, written to the artifact store for monitoring.

With ``sample_rate`` r > 0, each answered request is kept with probability r: its rows as
typed for the model (personal-data columns already hashed or dropped, as at ingestion; an
inline image kept as its decoded pixels, not its base64 text), the prediction, the model
version and the time. Kept rows are written as Parquet into hourly partitions,
``serving/samples/<YYYY-MM-DD>/<HH>/<replica>-<pid>-<n>.parquet``, when 1,000 rows wait or
a minute has passed, and when the server stops. The ``served_traffic`` asset reads them.
"""

import os
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import polars as pl

from lepton_core.store import ArtifactStore

if TYPE_CHECKING:  # the model (torch) is the server's; the monitor reads samples without it
    from lepton_core.serving.model import Scored, ServedModel

SAMPLES_PREFIX = "serving/samples"
FLUSH_ROWS = 1000
FLUSH_S = 60.0


def sample_key(at: datetime, name: str) -> str:
    return f"{SAMPLES_PREFIX}/{at:%Y-%m-%d}/{at:%H}/{name}.parquet"


class Sampler:
    def __init__(
        self,
        store: ArtifactStore,
        rate: float,
        replica: str = "local",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"sample rate {rate} is not between 0 and 1")
        self.store = store
        self.rate = rate
        self.replica = replica
        self.frames: list[pl.DataFrame] = []
        self.rows = 0
        self.clock = clock
        self.flushed = clock()
        self.random = random.Random()

    def add(self, served: "ServedModel", scored: "Scored") -> None:
        if self.rate == 0.0 or self.random.random() >= self.rate:
            return
        spec = served.spec
        frame = scored.rows.drop(spec.image.column) if spec.image is not None else scored.rows
        extra = [pl.Series("prediction", scored.predictions)]
        if scored.probabilities is not None:
            extra.append(pl.Series("confidence", [max(p) for p in scored.probabilities]))
        now = datetime.now(UTC)
        frame = frame.with_columns(
            *extra, pl.lit(served.version).alias("model_version"), pl.lit(now).alias("served_at")
        )
        self.frames.append(frame)
        self.rows += frame.height
        if self.rows >= FLUSH_ROWS or self.clock() - self.flushed >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Write what waits, one file per hour it was served in."""
        self.flushed = self.clock()
        if not self.frames:
            return
        frame = pl.concat(self.frames, how="diagonal_relaxed")
        self.frames, self.rows = [], 0
        hours = frame.with_columns(pl.col("served_at").dt.truncate("1h").alias("_hour"))
        for (hour,), part in hours.group_by("_hour"):
            name = f"{self.replica}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
            self.store.write_parquet(sample_key(hour, name), part.drop("_hour"))  # type: ignore[arg-type]

"""Demo landing data: scikit-learn's bundled handwritten digits, spread over daily partitions.

The 1,797 8x8 images ship inside scikit-learn (no download). ``seed_landing`` deals them
round-robin over ``days`` consecutive dates ending ``end`` and writes each day as Parquet or
CSV (alternating, and one day split over both), as an upstream system would drop them.
"""

import io
from datetime import date, timedelta

import numpy as np
import polars as pl

from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore


def digits_frame() -> pl.DataFrame:
    """All digits as one frame in the demo's landing schema (ids ``digits-0000`` …)."""
    from sklearn.datasets import load_digits  # a second to import: only the demo needs it

    images, targets = (np.asarray(a) for a in load_digits(return_X_y=True))
    spec = DIGITS_SPEC
    data = {
        spec.id_column: [f"digits-{i:04d}" for i in range(len(targets))],
        spec.label_column: targets.astype("int64"),
    }
    for j, column in enumerate(spec.feature_columns):
        data[column] = images[:, j].astype("float64")
    return pl.DataFrame(data)


def digits_day(rows: int, tag: str) -> pl.DataFrame:
    """A day of ``rows`` digits rows of any size, ids made fresh (``<id>-<tag>-<copy>``)."""
    base = digits_frame()
    copies = -(-rows // base.height)
    return pl.concat(
        [base.with_columns(pl.col("sample_id") + f"-{tag}-{i}") for i in range(copies)]
    ).head(rows)


def demo_dates(days: int, end: date) -> list[date]:
    return [end - timedelta(days=days - 1 - i) for i in range(days)]


def seed_landing(landing: ArtifactStore, days: int, end: date) -> list[str]:
    """Write the demo landing files; returns their keys. Existing files are left as they are."""
    if days < 1:
        raise ValueError("days must be at least 1")
    frame = digits_frame().with_row_index("_n")
    written = []
    for i, day in enumerate(demo_dates(days, end)):
        part = frame.filter(pl.col("_n") % days == i).drop("_n")
        prefix = f"{day.isoformat()}"
        if i == 0 and days > 1:
            # One day arrives as two files of different formats, as real feeds do.
            half = part.height // 2
            pieces = [("batch-a.parquet", part[:half]), ("batch-b.csv", part[half:])]
        elif i % 2 == 0:
            pieces = [("batch.parquet", part)]
        else:
            pieces = [("batch.csv", part)]
        for name, piece in pieces:
            key = f"{prefix}/{name}"
            if landing.exists(key):
                continue
            buf = io.BytesIO()
            if name.endswith(".parquet"):
                piece.write_parquet(buf)
            else:
                piece.write_csv(buf)
            landing.write_bytes(key, buf.getvalue())
            written.append(key)
    return written

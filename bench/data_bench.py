"""Ingestion and validation speed, side by side in one run.

    .venv/bin/python bench/data_bench.py [--rows 1000000]

A partition of ``--rows`` digits rows (repeated with fresh ids, a few rows corrupted) lands as
one Parquet and one CSV file. Prints:

- ingest throughput (rows/s) of Lepton's ingestion (Polars) against pandas reading the same
  files into one frame;
- validation time of the Polars path against GX's pandas engine on the digits suite
  (133 expectations) plus the keywords of the differential corpus (mostly, strict and
  one-sided bounds, a non-exact column set), and whether the two engines'
  results are identical (success and the whole GX result of every expectation).

Targets: validation at least 30x faster than GX's pandas engine with identical verdicts,
ingestion at least 5x pandas, and validation costing no more than ingestion.
"""

import argparse
import io
import json
import time
from collections.abc import Callable
from copy import copy
from typing import Any

import great_expectations as gx
import pandas as pd
import polars as pl

from lepton_assets.demo import digits_day
from lepton_core.rows import read_landing_file
from lepton_core.spec import DIGITS_SPEC
from lepton_core.validation.suite import build_suite, run_suite


def partition(rows: int) -> pl.DataFrame:
    frame = digits_day(rows, "r")
    # A handful of bad rows so that the verdicts are not trivially all-pass.
    return (
        frame.with_row_index("_n")
        .with_columns(
            pl.when(pl.col("_n") % 100_003 == 7)
            .then(99.0)
            .otherwise(pl.col("pixel_05"))
            .alias("pixel_05"),
            pl.when(pl.col("_n") % 200_003 == 11)
            .then(42)
            .otherwise(pl.col("label"))
            .alias("label"),
        )
        .drop("_n")
    )


def with_corpus_keywords(suite: gx.ExpectationSuite) -> gx.ExpectationSuite:
    """The digits suite plus the keywords the differential corpus covers: mostly, strict
    bounds, one-sided bounds, a non-exact column set (sets of strings are in the corpus)."""
    ex = gx.expectations
    extra = [
        ex.ExpectColumnValuesToBeBetween(
            column="pixel_05", min_value=0, max_value=16, strict_min=True, mostly=0.3
        ),
        ex.ExpectColumnValuesToBeBetween(column="pixel_06", max_value=15, strict_max=True),
        ex.ExpectColumnValuesToNotBeNull(column="pixel_07", mostly=0.999),
        ex.ExpectColumnValuesToBeInSet(column="label", value_set=[0, 1, 2, 3], mostly=0.4),
        ex.ExpectColumnValuesToBeUnique(column="pixel_00", mostly=0.5),
        ex.ExpectTableColumnsToMatchSet(column_set=["sample_id", "label"], exact_match=False),
    ]
    return gx.ExpectationSuite(
        name=suite.name, expectations=[copy(e) for e in [*suite.expectations, *extra]]
    )


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn``'s value and the seconds it took."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def identical(fast: Any, reference: Any) -> bool:
    """Every expectation's success and whole GX result the same in both suite results."""
    return all(
        a.success == b.success and a.to_json_dict()["result"] == b.to_json_dict()["result"]
        for a, b in zip(fast.results, reference.results, strict=True)
    )


def landing_files(frame: pl.DataFrame) -> dict[str, bytes]:
    """``frame`` as a day's landing files: its first half Parquet, the rest CSV."""
    half, parquet, csv = frame.height // 2, io.BytesIO(), io.BytesIO()
    frame[:half].write_parquet(parquet)
    frame[half:].write_csv(csv)
    return {"day/a.parquet": parquet.getvalue(), "day/b.csv": csv.getvalue()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    frame = partition(args.rows)
    blobs = landing_files(frame)
    print(
        f"partition: {frame.height} rows x {frame.width} columns; "
        f"{sum(map(len, blobs.values())) / 1e6:.0f} MB of landing files"
    )

    def ingest_polars() -> pl.DataFrame:
        return pl.concat([read_landing_file(n, b, DIGITS_SPEC)[0] for n, b in blobs.items()])

    def ingest_pandas() -> pd.DataFrame:
        return pd.concat(
            [
                pd.read_parquet(io.BytesIO(blobs["day/a.parquet"])),
                pd.read_csv(io.BytesIO(blobs["day/b.csv"])),
            ],
            ignore_index=True,
        )

    raw, polars_ingest = timed(ingest_polars)
    _, pandas_ingest = timed(ingest_pandas)
    batch = raw.select(DIGITS_SPEC.columns)
    suite = with_corpus_keywords(build_suite(DIGITS_SPEC))
    fast, polars_validate = timed(lambda: run_suite(batch, suite, engine="polars"))
    reference, gx_validate = timed(lambda: run_suite(batch, suite, engine="pandas"))
    results = {
        "rows": frame.height,
        "ingest_rows_per_s_polars": round(frame.height / polars_ingest),
        "ingest_rows_per_s_pandas": round(frame.height / pandas_ingest),
        "ingest_speedup_vs_pandas": round(pandas_ingest / polars_ingest, 2),
        "validate_seconds_polars": round(polars_validate, 3),
        "validate_seconds_gx_pandas": round(gx_validate, 3),
        "validate_speedup_vs_gx": round(gx_validate / polars_validate, 1),
        "validate_over_ingest": round(polars_validate / polars_ingest, 3),
        "identical_verdicts": identical(fast, reference),
        "failed_expectations": sum(not r.success for r in fast.results),
    }
    for key, value in results.items():
        print(f"  {key:28s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

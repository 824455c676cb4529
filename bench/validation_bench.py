"""Lepton's validation against the Polars-native validators, side by side in one run.

    bash bench/setup_peers.sh                       # once: pandera and dataframely, bench only
    bench/.peers/bin/python bench/validation_bench.py [--rows 1000000] [--runs 7]

The same checks on the same frame (``data_bench.partition``: digits rows with a few bad
ones): every column present, ids not null and unique, the label not null and in its set,
every pixel not null (nor NaN) and within [0, 16]. Engines, alternating (the order rotates
each round), timed from the frame in memory to each one's answer:

- Lepton: ``run_suite`` on the digits suite (133 expectations), GX's complete result each;
- dataframely (``Schema.filter``: the valid rows, and the count of failures per rule);
- pandera's Polars backend (``validate(lazy=True)``: every failure case).

GX's own pandas engine runs the same suite (``--gx-runs`` times, 1 by default: it takes
about 40 s), and every Lepton result must be identical to its one. A day's ingestion plus
validation (``read_landing_file`` of a Parquet and a CSV half, then ``run_suite``) is set
against a raw Polars read of the same bytes.

Goals: Lepton at least 2x the fastest peer and 100x GX's pandas engine (medians), identical
results, and ingestion plus validation at most 2x the raw read.
"""

import argparse
import io
import json
import statistics
from collections.abc import Callable
from typing import Any

import polars as pl
from data_bench import identical, landing_files, partition, timed

from lepton_core.rows import read_landing_file
from lepton_core.spec import DIGITS_SPEC
from lepton_core.validation.suite import build_suite, run_suite

SPEC = DIGITS_SPEC


def dataframely_check() -> Callable[[pl.DataFrame], int]:
    import dataframely as dy  # pyright: ignore[reportMissingImports] - bench/.peers only

    columns: dict[str, Any] = {
        SPEC.id_column: dy.String(primary_key=True),
        SPEC.label_column: dy.Int64(is_in=list(SPEC.classes or [])),
    }
    in_range = dy.Float64(min=SPEC.feature_min, max=SPEC.feature_max)
    columns |= {c: in_range for c in SPEC.feature_columns}
    schema = type("Digits", (dy.Schema,), columns)

    def check(frame: pl.DataFrame) -> int:
        return sum(schema.filter(frame).failure.counts().values())

    return check


def pandera_check() -> Callable[[pl.DataFrame], int]:
    import pandera.errors  # pyright: ignore[reportMissingImports] - bench/.peers only
    import pandera.polars as pa  # pyright: ignore[reportMissingImports] - bench/.peers only

    columns = {
        SPEC.id_column: pa.Column(pl.String, unique=True),
        SPEC.label_column: pa.Column(pl.Int64, pa.Check.isin(list(SPEC.classes or []))),
    }
    in_range = pa.Check.in_range(SPEC.feature_min, SPEC.feature_max)
    columns |= {c: pa.Column(pl.Float64, in_range) for c in SPEC.feature_columns}
    schema = pa.DataFrameSchema(columns, strict=True)

    def check(frame: pl.DataFrame) -> int:
        try:
            schema.validate(frame, lazy=True)
        except pandera.errors.SchemaErrors as errors:
            return errors.failure_cases.height
        return 0

    return check


def alternating(engines: dict[str, Callable[[], Any]], runs: int) -> dict[str, list[float]]:
    """Each engine's seconds over ``runs`` rounds, the order rotating every round."""
    names, times = list(engines), {name: [] for name in engines}
    for r in range(runs):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(engines[name])[1])
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--gx-runs", type=int, default=1)
    args = parser.parse_args()
    frame = partition(args.rows).select(SPEC.columns)
    suite = build_suite(SPEC)
    dataframely, pandera = dataframely_check(), pandera_check()
    blobs = landing_files(frame)

    def raw_read() -> pl.DataFrame:
        parquet = pl.read_parquet(io.BytesIO(blobs["day/a.parquet"]))
        return pl.concat([parquet, pl.read_csv(io.BytesIO(blobs["day/b.csv"]))])

    def ingest_and_validate() -> Any:
        read = [read_landing_file(name, blob, SPEC)[0] for name, blob in blobs.items()]
        return run_suite(pl.concat(read).select(SPEC.columns), suite, engine="polars")

    def gx(batch: pl.DataFrame) -> Any:
        return run_suite(batch, suite, engine="pandas")

    engines = {
        "lepton": lambda: run_suite(frame, suite, engine="polars"),
        "dataframely": lambda: dataframely(frame),
        "pandera": lambda: pandera(frame),
        "raw_read": raw_read,
        "ingest_and_validate": ingest_and_validate,
    }
    times = alternating(engines, args.runs)
    gx_runs = [timed(lambda: gx(frame)) for _ in range(args.gx_runs)]
    reference, gx_times = gx_runs[0][0], [t for _, t in gx_runs]
    fast = run_suite(frame, suite, engine="polars")
    median = {name: statistics.median(t) for name, t in times.items()}
    peer = min(median["dataframely"], median["pandera"])
    results = {
        "rows": frame.height,
        "expectations": len(suite.expectations),
        **{f"seconds_{name}": [round(t, 3) for t in ts] for name, ts in times.items()},
        "seconds_gx_pandas": [round(t, 2) for t in gx_times],
        **{f"median_{name}": round(m, 3) for name, m in median.items()},
        "lepton_over_fastest_peer": round(peer / median["lepton"], 2),
        "lepton_over_gx_pandas": round(statistics.median(gx_times) / median["lepton"], 1),
        "ingest_and_validate_over_raw_read": round(
            median["ingest_and_validate"] / median["raw_read"], 2
        ),
        "identical_to_gx": identical(fast, reference),
        "failed_expectations": sum(not r.success for r in fast.results),
        "failures_dataframely": dataframely(frame),
        "failure_cases_pandera": pandera(frame),
    }
    for key, value in results.items():
        print(f"  {key:34s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

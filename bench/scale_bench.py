"""Per-day cost over a growing history, and the dataset build, side by side in one run.

    .venv/bin/python bench/scale_bench.py [--days 100] [--rows 100000] [--window 10]

(defaults: 10M rows, about 7 minutes here; ``--days 20 --rows 20000 --window 5`` for a
quick look).

Lands ``--days`` daily Parquet files of ``--rows`` digits-like rows (fresh ids), then ingests
and validates each day in order through Dagster (``raw_batches`` + ``validated_batches``, the
real assets with their checks), with a training dataset built after the first day so the
drift check runs every day. Prints the mean seconds per day of the first and the last
``--window`` days and their ratio (goal: <= 1.2), then the ``training_dataset`` build time
over all days and the build's peak RSS (a child process, so the figure is the build's own),
then one epoch of the MLP on ``--processes`` Horovod ranks over the whole dataset: samples/s
and each rank's peak RSS (the worker reports both).
"""

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg

from lepton_assets.demo import digits_day

BUILD = """
import sys
from lepton_core.data import accepted_partitions, build_dataset
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore
store = ArtifactStore(sys.argv[1])
print(build_dataset(store, DIGITS_SPEC, accepted_partitions(store)[0])[0])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--days", type=int, default=100)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--window", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        os.environ.update(LEPTON_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"))
        (home / "dagster_home").mkdir()
        from training_bench import train_job

        from lepton_assets.definitions import resources
        from lepton_assets.ingestion import raw_batches
        from lepton_assets.validation import validated_batches
        from lepton_core.data import accepted_partitions, build_dataset
        from lepton_core.keys import current_key
        from lepton_core.spec import DIGITS_SPEC, ModelRef, TrainingSettings
        from lepton_core.store import ArtifactStore

        days = [(date(2025, 1, 1) + timedelta(days=d)).isoformat() for d in range(args.days)]
        for i, day in enumerate(days):
            buf = io.BytesIO()
            digits_day(args.rows, f"d{i}").write_parquet(buf)
            (home / "landing" / day).mkdir(parents=True)
            (home / "landing" / day / "batch.parquet").write_bytes(buf.getvalue())
        artifacts = ArtifactStore(f"file://{home / 'artifacts'}")
        seconds = []
        with dg.instance_for_test() as instance:
            for i, day in enumerate(days):
                started = time.perf_counter()
                result = dg.materialize(
                    [raw_batches, validated_batches],
                    resources=resources,
                    instance=instance,
                    partition_key=day,
                )
                seconds.append(time.perf_counter() - started)
                assert result.success, day
                if i == 0:  # a training dataset, so the drift check runs from day 2 on
                    version, _ = build_dataset(
                        artifacts, DIGITS_SPEC, accepted_partitions(artifacts)[0]
                    )
                    artifacts.write_json(current_key("training_dataset"), {"version": version})
        started = time.perf_counter()
        build = [sys.executable, "-c", BUILD, artifacts.uri]
        version = subprocess.run(build, check=True, capture_output=True, text=True).stdout.strip()
        build_seconds = time.perf_counter() - started
        build_rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        prefix = train_job(
            artifacts,
            version,
            TrainingSettings(batch_size=256),
            1,
            args.processes,
            ModelRef(factory="lepton_core.models:mlp"),
        )
        [epoch] = artifacts.read_json(f"{prefix}/history.json")
        train_rows = artifacts.read_json(f"datasets/{version}/dataset.json")["rows"]["train"]
    first = seconds[1 : 1 + args.window]  # day 1 also pays Dagster's first-run warm-up
    last = seconds[-args.window :]
    results = {
        "days": args.days,
        "rows_per_day": args.rows,
        "first_days_s_per_day": round(sum(first) / len(first), 3),
        "last_days_s_per_day": round(sum(last) / len(last), 3),
        "last_over_first": round(sum(last) / sum(first), 3),
        "dataset_build_s": round(build_seconds, 2),
        "dataset_build_peak_rss_mb": round(build_rss_mb),
        "train_rows": train_rows,
        "training_processes": args.processes,
        "training_samples_per_s": epoch["samples_per_s"],
        "rank_peak_rss_mb": epoch["rank_peak_rss_mb"],
    }
    for key, value in results.items():
        print(f"  {key:28s} {value}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

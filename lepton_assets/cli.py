"""The ``lepton`` command: seed the demo landing zone, run the whole lifecycle, open the UI.

    lepton seed --days 7      write the digits demo into the landing zone
    lepton demo --days 7      seed, then run ingest+validate per day and the training job
    lepton rollback           point the champion back at the previous one
    lepton predict --input in.parquet --output out.parquet
                              predictions of the champion (loaded weights-only)
    lepton ui                 dagster dev on this project, with the same embedded defaults

Embedded defaults: ``LEPTON_HOME`` (default ``./.lepton``) holds the landing zone, the
artifact store and ``DAGSTER_HOME`` (a SQLite instance), unless ``LEPTON_LANDING_URI``,
``LEPTON_ARTIFACTS_URI`` or ``DAGSTER_HOME`` say otherwise.
"""

import argparse
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import polars as pl

from lepton_assets.champion_pointer import current_champion
from lepton_assets.demo import demo_dates, seed_landing
from resources.artifact_store import ArtifactStoreResource, lepton_home
from resources.landing_zone import LandingZoneResource

# The embedded instance: SQLite storage (Dagster's default) and one slot in every pool, so
# one Horovod training step runs at a time (trained_model is in pool "horovod_training").
EMBEDDED_DAGSTER_YAML = """\
# Written by `lepton` for the embedded Dagster home; edit freely, it is not rewritten.
concurrency:
  pools:
    default_limit: 1
"""


def prepare_home() -> Path:
    """Create LEPTON_HOME and point DAGSTER_HOME inside it unless it is set already.

    A DAGSTER_HOME without a dagster.yaml gets the embedded one above; an existing file is
    never touched.
    """
    home = lepton_home()
    home.mkdir(parents=True, exist_ok=True)
    dagster_home = Path(os.environ.setdefault("DAGSTER_HOME", str(home / "dagster_home")))
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text(EMBEDDED_DAGSTER_YAML)
    return home


def yesterday() -> date:
    # Daily partitions are UTC days; the newest complete one is yesterday.
    return datetime.now(UTC).date() - timedelta(days=1)


def cmd_seed(args: argparse.Namespace) -> int:
    prepare_home()
    landing = LandingZoneResource().get_store()
    written = seed_landing(landing, args.days, args.end)
    print(
        f"landing zone {landing.uri}: {len(written)} new files for {args.days} days "
        f"ending {args.end}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from lepton_assets.definitions import defs

    cmd_seed(args)
    instance = dg.DagsterInstance.get()
    # INFO on the console: step logs and epoch metrics, without Dagster's DEBUG event stream.
    quiet = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    ingest = defs.resolve_job_def("ingest_job")
    for day in demo_dates(args.days, args.end):
        result = ingest.execute_in_process(
            run_config=quiet, instance=instance, partition_key=day.isoformat()
        )
        print(f"ingest_job {day}: {'ok' if result.success else 'FAILED'} (run {result.run_id})")
    result = defs.resolve_job_def("training_job").execute_in_process(
        run_config=quiet, instance=instance
    )
    print(f"training_job: {'ok' if result.success else 'FAILED'} (run {result.run_id})")
    store = ArtifactStoreResource().get_store()
    report = store.read_json("current/evaluation_report.json")["prefix"]
    ev = store.read_json(f"{report}/evaluation.json")
    print(
        f"test accuracy: {ev['candidate']['accuracy']:.4f} ({ev['variant']}, "
        f"{'blessed' if ev['blessed'] else 'not blessed'})"
    )
    print(f"evaluation report: {store.url(report + '/report.html')}")
    print(f"Dagster home: {os.environ['DAGSTER_HOME']} (open it with: lepton ui)")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from lepton_assets.definitions import defs

    prepare_home()
    result = defs.resolve_job_def("rollback_job").execute_in_process(
        instance=dg.DagsterInstance.get()
    )
    champion = current_champion(ArtifactStoreResource().get_store())
    print(
        f"rollback_job: ok (run {result.run_id}); champion is now "
        f"{champion['model_prefix'] if champion else None}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lepton_assets.predict import predict_frame

    store = ArtifactStoreResource().get_store()
    predictions, model = predict_frame(store, pl.read_parquet(args.input))
    predictions.write_parquet(args.output)
    print(f"{predictions.height} predictions by {model} -> {args.output}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    prepare_home()
    command = ["dagster", "dev", "-m", "lepton_assets.definitions", "-p", str(args.port)]
    os.execvp(command[0], command)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lepton", description="Seed, run and watch the Lepton ML lifecycle."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (
        ("seed", cmd_seed, "write the demo landing files"),
        ("demo", cmd_demo, "seed and run the whole lifecycle"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--days", type=int, default=7, help="number of daily partitions")
        p.add_argument(
            "--end",
            type=date.fromisoformat,
            default=yesterday(),
            help="last day (YYYY-MM-DD); default yesterday (UTC)",
        )
        p.set_defaults(func=func)
    rollback = sub.add_parser("rollback", help="point the champion back at the previous one")
    rollback.set_defaults(func=cmd_rollback)
    predict = sub.add_parser("predict", help="predict with the champion model")
    predict.add_argument("--input", required=True, help="Parquet file with the feature columns")
    predict.add_argument("--output", required=True, help="Parquet file to write")
    predict.set_defaults(func=cmd_predict)
    ui = sub.add_parser("ui", help="open the Dagster UI (dagster dev) on this project")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

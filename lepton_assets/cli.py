"""The ``lepton`` command: the lifecycle from a terminal, recorded in the same Dagster instance
the UI shows.

    lepton run                 ingest + validate every landed day that is new or changed, then
                               train, compress, evaluate and promote; ends with one JSON line
    lepton ingest --day D      ingest + validate one day
    lepton train               the training job on the validated days (dataset -> champion)
    lepton status              the champion, the current dataset, the days, the latest runs
    lepton seed --days 7       write the digits demo into the landing zone
    lepton demo --days 7       seed, then run
    lepton rollback            point the champion back at the previous one
    lepton predict --input in.parquet --output out.parquet [--images DIR]
    lepton export --format onnx the champion as ONNX, checked with onnxruntime without torch
    lepton serve [--port 8080] serve the champion over HTTP, following promotions (see
                               lepton_core/serving)
    lepton lineage [MODEL]     the model card of MODEL (default: the champion): its data,
                               annotation batches, code, metrics, promotions (--html)
    lepton backup DEST         snapshot the artifact store, id index, landing zone and Dagster
                               instance into DEST (--data reference: name the data, no copy)
    lepton restore SRC         bring a backup back into an empty home (--force: a used one)
    lepton ui                  dagster dev on this project, with the same embedded defaults

Every command takes ``--project lepton.yaml`` (else ``LEPTON_PROJECT``, ``LEPTON_DATASET`` or
the digits demo). Embedded defaults: ``LEPTON_HOME`` (default ``./.lepton``) holds the landing
zone, the artifact store and ``DAGSTER_HOME`` (a SQLite instance), unless
``LEPTON_LANDING_URI``, ``LEPTON_ARTIFACTS_URI`` or ``DAGSTER_HOME`` say otherwise.

A failure exits with status 1 and names the stage, the partition (and the file, when the
error does) and the reason.
"""

import argparse
import getpass
import json
import os
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl

from lepton_assets.demo import seed_landing
from lepton_assets.partitions import landed_days
from lepton_core.keys import current_key, raw_manifest_key, validated_manifest_key
from lepton_core.registry import current_champion, require_champion
from lepton_core.serving.settings import ServeSettings
from lepton_core.store import ArtifactStore, check_key
from resources.alerts import own_error
from resources.artifact_store import ArtifactStoreResource, lepton_home
from resources.landing_zone import LandingZoneResource

# The embedded instance: SQLite storage (Dagster's default) and one slot in every pool, so
# one Horovod training step runs at a time (trained_model is in pool "horovod_training").
EMBEDDED_DAGSTER_YAML_TEMPLATE = """\
# Written by `lepton` for the embedded Dagster home; edit freely, it is not rewritten.
concurrency:
  pools:
    default_limit: 1
# Run monitoring (needs the daemon): a run whose worker died is marked failed and its pool
# slots are freed, so a killed training run cannot hold horovod_training for ever.
run_monitoring:
  enabled: true
  poll_interval_seconds: {monitor_s}
  free_slots_after_run_end_seconds: {monitor_s}
"""
# Every 30 s in a home `lepton` writes; a test's home checks and frees slots sooner.
EMBEDDED_DAGSTER_YAML = EMBEDDED_DAGSTER_YAML_TEMPLATE.format(monitor_s=30)
# INFO on the console: step logs and epoch metrics, without Dagster's DEBUG event stream.
QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
STAGES = {
    "raw_batches": "ingestion",
    "validated_batches": "validation",
    "training_dataset": "dataset",
    "trained_model": "training",
    "compressed_model": "compression",
    "evaluation_report": "evaluation",
    "champion_model": "promotion",
}


class StageFailed(Exception):
    """A job failed; the message names the stage, the partition and the reason."""


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


def failure_reason(result: dg.ExecuteInProcessResult, partition: str | None) -> str:
    """Stage, partition and reason of a failed run: the failed step's error, or the failed
    blocking checks with their descriptions."""
    where = f" partition {partition}" if partition else ""
    checks = [c for c in result.get_asset_check_evaluations() if not c.passed]
    if checks:
        check = checks[0]
        stage = STAGES.get(check.asset_key.to_user_string(), "checks")
        return f"{stage}{where}: check {check.check_name} failed: {check.description}"
    for event in result.all_events:
        if event.is_step_failure and event.step_key:
            data: Any = event.event_specific_data
            # Dagster wraps the step's own exception: report that one.
            error = own_error(data.error if data else None)
            message = error.message.strip() if error is not None else "unknown error"
            return f"{STAGES.get(event.step_key, event.step_key)}{where}: {message}"
    return f"run {result.run_id}{where} failed"


def execute(job_name: str, partition: str | None = None, run_config: dict | None = None):
    from lepton_assets.definitions import defs

    result = defs.resolve_job_def(job_name).execute_in_process(
        run_config={**QUIET, **(run_config or {})},
        instance=dg.DagsterInstance.get(),
        partition_key=partition,
        raise_on_error=False,
        # Who ran it, for the champion's history and model card.
        tags={"lepton/user": getpass.getuser()},
    )
    if not result.success:
        raise StageFailed(failure_reason(result, partition))
    return result


def changed_days(landing: LandingZoneResource, artifacts_uri: str) -> list[str]:
    """Landed days (that are partitions already) whose files differ from what their last
    ingestion read, days never ingested included. One listing per day: a file whose size and
    modified time are those its ingestion recorded keeps its recorded sha256; only new files
    and files whose stamp moved are read and hashed, so a call's cost does not grow with the
    bytes of history. Files are compared by their key in the landing zone, not their URL,
    so a landing zone restored elsewhere (``lepton restore``) holds the same days."""
    store, artifacts = landing.get_store(), ArtifactStore(artifacts_uri)
    days = []
    for day in landed_days(store.folders())[0]:
        key = raw_manifest_key(day)
        if not artifacts.exists(key):
            days.append(day)
            continue
        manifest, stamps = artifacts.read_json(key), store.files(day, recursive=False)
        files, recorded = by_key(manifest["files"], day), by_key(manifest.get("stamps", {}), day)
        hashes = {}
        for file in landing.partition_files(day):
            same = recorded.get(file) == list(stamps[file]) and file in files
            hashes[file] = files[file] if same else store.sha256(file)
        if hashes != files:
            days.append(day)
    return days


def by_key(by_url: dict[str, Any], day: str) -> dict[str, Any]:
    """A raw manifest's entries (keyed by landing URL) keyed by ``<day>/<name>``."""
    return {url[url.rindex(f"/{day}/") + 1 :]: value for url, value in by_url.items()}


def ingest_day(day: str) -> None:
    execute("ingest_job", partition=day)
    store = ArtifactStoreResource().get_store()
    manifest = store.read_json(validated_manifest_key(day))
    print(f"ingest {day}: ok ({manifest['rows']} rows, {manifest['quarantined']} quarantined)")


def train() -> dict[str, Any]:
    """The training job; returns the summary the CLI prints as its last JSON line."""
    from lepton_core.evaluate import headline  # torch: only where a command trains or loads

    result = execute("training_job")
    store = ArtifactStoreResource().get_store()
    report = store.read_json(current_key("evaluation_report"))["prefix"]
    ev = store.read_json(f"{report}/evaluation.json")
    champion = current_champion(store)
    return {
        "status": "promoted",
        "run_id": result.run_id,
        "champion": champion["model_prefix"] if champion else None,
        "dataset_version": ev["dataset_version"],
        "variant": ev["variant"],
        "task": ev["task"],
        "metrics": headline(ev),
        "report": store.url(f"{report}/report.html"),
    }


def cmd_run(args: argparse.Namespace) -> int:
    prepare_home()
    landing = LandingZoneResource()
    days = changed_days(landing, ArtifactStoreResource().resolved_uri())
    print(f"{len(days)} new or changed days: {', '.join(days) or '-'}")
    failures = []
    for day in days:
        try:
            ingest_day(day)
        except StageFailed as exc:
            failures.append(str(exc))
            print(f"ingest {day}: FAILED: {exc}", file=sys.stderr)
    if failures:
        raise StageFailed(
            f"{len(failures)} of {len(days)} days failed; fix their files and run again "
            f"(nothing is trained on a partial set). First: {failures[0]}"
        )
    store = ArtifactStoreResource().get_store()
    if not days and current_champion(store) is not None and not args.retrain:
        champion = current_champion(store) or {}
        summary = {"status": "unchanged", "champion": champion.get("model_prefix")}
        summary |= {"metrics": champion.get("metrics"), "report": champion.get("report")}
    else:
        summary = train()
    print(f"champion {summary['champion']}: {summary['metrics']}; report {summary['report']}")
    print(json.dumps(summary, sort_keys=True))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    prepare_home()
    ingest_day(args.day.isoformat())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    prepare_home()
    print(json.dumps(train(), sort_keys=True))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    prepare_home()
    store = ArtifactStoreResource().get_store()
    instance = dg.DagsterInstance.get()
    dataset = (
        store.read_json(current_key("training_dataset"))
        if store.exists(current_key("training_dataset"))
        else None
    )
    runs = instance.get_runs(limit=5)
    status = {
        "champion": current_champion(store),
        "training_dataset": dataset,
        "days_to_ingest": changed_days(LandingZoneResource(), store.uri),
        "latest_runs": [
            {"job": r.job_name, "status": r.status.value, "run_id": r.run_id, **r.tags}
            for r in runs
        ],
        "dagster_home": os.environ["DAGSTER_HOME"],
    }
    print(json.dumps(status, indent=2, sort_keys=True, default=str))
    return 0


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
    cmd_seed(args)
    code = cmd_run(args)
    print(f"Dagster home: {os.environ['DAGSTER_HOME']} (open it with: lepton ui)")
    return code


def cmd_rollback(args: argparse.Namespace) -> int:
    prepare_home()
    result = execute("rollback_job")
    champion = current_champion(ArtifactStoreResource().get_store())
    print(
        f"rollback_job: ok (run {result.run_id}); champion is now "
        f"{champion['model_prefix'] if champion else None}"
    )
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from lepton_core.predict import predict_frame

    store = ArtifactStoreResource().get_store()
    frame = pl.read_parquet(args.input)
    key = os.environ.get("LEPTON_PII_KEY")
    predictions, model = predict_frame(store, frame, args.images, key)
    predictions.write_parquet(args.output)
    print(f"{predictions.height} predictions by {model} -> {args.output}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    """Apply (or, with --dry-run, list) the artifact store's retention plan."""
    from lepton_core.retention import apply_plan, retention_plan

    store = ArtifactStoreResource().get_store()
    plan = retention_plan(store, keep_last=args.keep_last, keep_days=args.keep_days)
    verb = "would remove" if args.dry_run else "removing"
    for entry in sorted(plan.delete, key=lambda e: (e.kind, e.name)):
        print(f"{verb} {entry.kind} {entry.name} ({len(entry.files)} files, {entry.size} bytes)")
    if not args.dry_run:
        apply_plan(store, plan)
    print(
        f"gc: {len(plan.delete)} entries, {plan.freed_bytes} bytes "
        f"{'to free (dry run: nothing removed)' if args.dry_run else 'freed'}; "
        f"{len(plan.keep)} kept"
    )
    return 0


def cmd_health(args: argparse.Namespace) -> int:
    """One line per part of the stack: up (what answered) or DOWN (why); 1 if any is down."""
    from lepton_assets.health import health

    report = health(args.webserver.rstrip("/"), args.daemon_stale_s)
    for name, (up, detail) in report.items():
        print(f"{name:15s} {'up  ' if up else 'DOWN'}  {detail}")
    return 0 if all(up for up, _ in report.values()) else 1


def cmd_export(args: argparse.Namespace) -> int:
    """The champion as ONNX (fp32 and int8), checked against torch, recorded beside it."""
    from lepton_core.edge import export_onnx
    from lepton_core.models import champion_files

    store = ArtifactStoreResource().get_store()
    champion = require_champion(store)
    record = export_onnx(store, champion["model_prefix"], champion_files(champion))
    for kind, file in record["files"].items():
        print(f"{kind}: {store.url(file['key'])} (sha256 {file['sha256'][:12]})")
    print(f"checks on {record['checks']['rows']} test rows: {json.dumps(record['checks'])}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the champion (lepton_core/serving): uvicorn, one app per worker process."""
    import ipaddress
    import shutil
    import socket
    import tempfile

    import uvicorn

    token = os.environ.get("LEPTON_SERVE_TOKEN")
    local = (
        args.uds is not None or ipaddress.ip_address(socket.gethostbyname(args.host)).is_loopback
    )
    if not local and not token:
        raise ValueError(
            f"--host {args.host} reaches beyond this machine: set LEPTON_SERVE_TOKEN (a bearer "
            "token clients must send) or listen on 127.0.0.1"
        )
    where = f"unix:{args.uds}" if args.uds else f"http://{args.host}:{args.port}"
    listener = Path(args.uds).stem if args.uds else str(args.port)
    replica = f"{socket.gethostname()}-{listener}".replace("/", "_")
    os.environ["LEPTON_ARTIFACTS_URI"] = ArtifactStoreResource().resolved_uri()
    settings = {
        "MAX_BATCH": args.max_batch,
        "MAX_DELAY_MS": args.max_delay_ms,
        "RUNTIME": args.runtime,
        "THREADS": args.threads,
        "SAMPLE_RATE": args.sample_rate,
        "POLL_S": args.poll_s,
        "REPLICA": os.environ.get("LEPTON_SERVE_REPLICA", replica),
    }
    os.environ.update({f"LEPTON_SERVE_{k}": str(v) for k, v in settings.items()})
    # each worker counts its own metrics in this folder; /metrics adds them up
    made = None
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        made = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="lepton-metrics-")
    print(
        f"lepton serve: {args.workers} worker(s) on {where}, "
        f"champion of {os.environ['LEPTON_ARTIFACTS_URI']}; "
        + (
            "bearer token required"
            if token
            else "no LEPTON_SERVE_TOKEN: 127.0.0.1 only, no authentication"
        ),
        flush=True,
    )
    try:
        uvicorn.run(
            "lepton_core.serving.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            uds=args.uds,
            workers=args.workers,
            log_level=args.log_level,
            timeout_keep_alive=5,
            access_log=False,
        )
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    """The model card of a model (default: the champion), as Markdown or HTML."""
    from lepton_core.evaluate import report_html
    from lepton_core.model_card import card_markdown

    store = ArtifactStoreResource().get_store()
    prefix = args.model or require_champion(store)["model_prefix"]
    if not store.exists(f"{check_key(prefix)}/model.json"):
        raise ValueError(f"no model at {store.url(prefix)} (no model.json there)")
    markdown = card_markdown(store, prefix)
    print(report_html(markdown, {}, f"Model card: {prefix}") if args.html else markdown)
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from lepton_assets.backup import backup

    prepare_home()
    manifest = backup(args.dest.resolve(), args.data, args.force)
    size = sum(f["bytes"] for f in manifest["files"].values())
    referenced = sum(len(keys) for keys in manifest["referenced"].values())
    print(
        f"backup: {len(manifest['files'])} files ({size} bytes) in {args.dest}, "
        f"{referenced} data files by reference; Dagster storage {manifest['dagster_storage']}"
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from lepton_assets.backup import restore

    prepare_home()
    manifest = restore(args.source.resolve(), args.force, tuple(args.referenced_from))
    print(
        f"restore: {len(manifest['files'])} files from {args.source} "
        f"(backup of {manifest['created']}) into {lepton_home()}"
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    prepare_home()
    # The schema first, here: `dagster dev` starts a webserver and a daemon that would both
    # create a new SQLite instance's schema at once (dagster-io/dagster#27390).
    with dg.DagsterInstance.get() as instance:
        instance.upgrade(print_fn=lambda _: None)
    command = ["dagster", "dev", "-m", "lepton_assets.definitions", "-p", str(args.port)]
    os.execvp(command[0], command)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--project", type=Path, help="project file (lepton.yaml); default $LEPTON_PROJECT"
    )
    top = argparse.ArgumentParser(
        prog="lepton", description="Run and watch the Lepton ML lifecycle."
    )
    sub = top.add_subparsers(dest="command", required=True)

    def command(name: str, func: Any, text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=text, parents=[common])
        p.set_defaults(func=func)
        return p

    for name, func, text in (
        ("run", cmd_run, "ingest new or changed days, then train, compress, evaluate, promote"),
        ("demo", cmd_demo, "seed the digits demo, then run"),
    ):
        p = command(name, func, text)
        p.add_argument("--retrain", action="store_true", help="train even with no new day")
    for p in (command("seed", cmd_seed, "write the demo landing files"), sub.choices["demo"]):
        p.add_argument("--days", type=int, default=7, help="number of daily partitions")
        p.add_argument(
            "--end",
            type=date.fromisoformat,
            default=yesterday(),
            help="last day (YYYY-MM-DD); default yesterday (UTC)",
        )
    ingest = command("ingest", cmd_ingest, "ingest and validate one day")
    ingest.add_argument("--day", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    command("train", cmd_train, "train, compress, evaluate and promote")
    command("status", cmd_status, "champion, dataset, days to ingest, latest runs")
    command("rollback", cmd_rollback, "point the champion back at the previous one")
    predict = command("predict", cmd_predict, "predict with the champion model")
    predict.add_argument("--input", required=True, help="Parquet file with the feature columns")
    predict.add_argument("--output", required=True, help="Parquet file to write")
    predict.add_argument("--images", type=Path, help="folder the image paths are relative to")
    gc = command("gc", cmd_gc, "remove datasets, models, checkpoints and old served days")
    gc.add_argument(
        "--keep-last", type=int, default=3, help="most recent entries of each kind to keep"
    )
    gc.add_argument(
        "--keep-days",
        type=int,
        default=30,
        help="newest days of served samples, served-drift records and annotation candidates "
        "to keep",
    )
    gc.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")
    check = command("health", cmd_health, "say which part of a running stack is down")
    check.add_argument("--webserver", default="http://127.0.0.1:3000", help="its base URL")
    check.add_argument(
        "--daemon-stale-s",
        type=float,
        help="a daemon whose last heartbeat is older is down (default 90; daemons beat every 30 s)",
    )
    export = command("export", cmd_export, "write the champion as ONNX (fp32, int8)")
    export.add_argument("--format", choices=["onnx"], default="onnx")
    serve = command("serve", cmd_serve, "serve the champion over HTTP (KServe v2, /predict)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--uds", help="listen on this Unix socket instead (behind a balancer)")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes")
    default = ServeSettings  # its class attributes are the defaults
    serve.add_argument(
        "--threads", type=int, default=default.threads, help="torch threads per process"
    )
    serve.add_argument(
        "--max-batch", type=int, default=default.max_batch, help="rows in one forward"
    )
    serve.add_argument(
        "--max-delay-ms",
        type=float,
        default=default.max_delay_ms,
        help="longest wait for a batch to fill",
    )
    serve.add_argument("--runtime", choices=["torch", "onnx"], default=default.runtime)
    serve.add_argument(
        "--sample-rate",
        type=float,
        default=default.sample_rate,
        help="share of requests kept for monitoring",
    )
    serve.add_argument(
        "--poll-s", type=float, default=default.poll_s, help="champion pointer poll interval"
    )
    serve.add_argument("--log-level", default="info")
    lineage = command("lineage", cmd_lineage, "the model card: data, code, metrics, promotions")
    lineage.add_argument(
        "model", nargs="?", help="model prefix, e.g. compressed/<m>/fp32 (default: the champion)"
    )
    lineage.add_argument("--html", action="store_true", help="print the HTML page instead")
    save = command("backup", cmd_backup, "snapshot the store, landing zone and Dagster instance")
    save.add_argument("dest", type=Path, help="a new or empty local folder")
    save.add_argument(
        "--data",
        choices=["copy", "reference"],
        default="copy",
        help="copy the landing files and Parquet batches, or only name them (default copy)",
    )
    save.add_argument("--force", action="store_true", help="even with runs in progress")
    back = command("restore", cmd_restore, "bring a backup back into an empty home")
    back.add_argument("source", type=Path, help="a folder written by lepton backup")
    back.add_argument("--force", action="store_true", help="write over a home that holds data")
    back.add_argument(
        "--referenced-from",
        action="append",
        default=[],
        metavar="URI",
        help="a store (file:// or s3://) that data backed up by reference may be read from; "
        "the restore names the ones it needs",
    )
    ui = command("ui", cmd_ui, "open the Dagster UI (dagster dev) on this project")
    ui.add_argument("--port", type=int, default=3000)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.project is not None:
        if not args.project.is_file():
            print(f"lepton: project file {args.project} not found", file=sys.stderr)
            return 2
        os.environ["LEPTON_PROJECT"] = str(args.project.resolve())
    try:
        return args.func(args)
    except (StageFailed, ValueError) as exc:
        print(f"lepton {args.command}: FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

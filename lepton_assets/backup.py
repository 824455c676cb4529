"""Backup and restore of a Lepton home: the artifact store, the id index, the landing zone and
the Dagster instance, in one folder.

``backup(dest, data)`` writes into an empty (or new) local folder:

- ``artifacts/<key>``: every file of the artifact store (metadata, datasets' descriptions,
  models, reports, the champion pointer and history); the id index's SQLite file is copied
  with SQLite's online backup, so the copy is consistent even while it is open;
- ``landing/<key>``: the landing zone's files;
- ``dagster/``: the Dagster home (``dagster.yaml`` and, for the embedded instance, its SQLite
  files, each through the online backup) and, when the instance's storage is PostgreSQL,
  ``dagster/instance.dump`` from ``pg_dump --format=custom``;
- ``manifest.json`` last (its presence means the backup is whole): what was taken, from
  where, each file's size and sha256.

With ``data="reference"`` the data (landing files, and the Parquet batches and shards of the
artifact store) are not copied: the manifest names them with their URI and size, and restore
takes them from there (an S3 bucket with versioning is the usual place). An id index in a
database of its own (``LEPTON_ID_INDEX_URL``) is backed up with that database's own tools.

A backup refuses to start while the instance has runs queued or in progress (they would write
during the copy) unless forced. ``restore(src)`` refuses a home that holds anything unless
forced; it checks every file against the manifest's sha256 as it writes it back.
"""

import contextlib
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy.engine import make_url

from lepton_core.store import ArtifactStore
from resources.artifact_store import ArtifactStoreResource
from resources.landing_zone import LandingZoneResource

MANIFEST = "manifest.json"
# Bulky row data; with data="reference" these stay where they are.
DATA_FOLDERS = ("raw", "validated", "quarantine", "shards")
ACTIVE = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


# A database's write-ahead log, shared memory and rollback journal: the online backup's copy
# already holds what they do, and a stale journal beside a restored copy would be replayed.
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


class BackupError(ValueError):
    """A backup or restore that cannot go on; says why and what to do."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_data(key: str) -> bool:
    return key.split("/", 1)[0] in DATA_FOLDERS and key.endswith(".parquet")


def copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite database, even one another process has open. Opened
    for writing, as any user of it would: a journal an interrupted writer left is rolled back
    first (read-only, SQLite refuses such a database)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with (
        contextlib.closing(sqlite3.connect(source)) as src,
        contextlib.closing(sqlite3.connect(target)) as dst,
    ):
        src.backup(dst)


def postgres_url(instance: dg.DagsterInstance) -> str | None:
    """The instance's PostgreSQL URL, or None for the embedded SQLite instance."""
    from dagster_postgres import PostgresRunStorage

    storage = instance.run_storage
    return storage.postgres_url if isinstance(storage, PostgresRunStorage) else None


def check_destination(dest: Path) -> None:
    """Before anything is written: ``dest`` is new or empty, and its folder is writable."""
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise BackupError(f"backup destination {dest} is not an empty folder")
    parent = dest if dest.exists() else dest.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise BackupError(f"backup destination {dest} is not writable ({parent} refuses writes)")


class Writer:
    """Writes files under the backup folder and records each one's size and sha256."""

    def __init__(self, root: Path) -> None:
        self.root, self.files = root, {}

    def add(self, name: str, write: Any) -> None:
        target = self.root / name
        target.parent.mkdir(parents=True, exist_ok=True)
        write(target)
        self.files[name] = {"bytes": target.stat().st_size, "sha256": sha256_file(target)}

    def copy_store(self, store: ArtifactStore, folder: str, data: str) -> dict[str, int]:
        """Copy a store's files under ``folder``; data files are only referenced (key ->
        bytes) when ``data`` is "reference"."""
        referenced = {}
        for key, (size, _) in sorted(store.files("").items()):
            if key.startswith(".tmp-") or "/.tmp-" in key or key.endswith(SQLITE_SIDE_FILES):
                continue
            if data == "reference" and (folder == "landing" or is_data(key)):
                referenced[key] = size
            elif store.is_local and key.endswith(".sqlite"):
                self.add(f"{folder}/{key}", lambda t, k=key: copy_sqlite(store.local_path(k), t))
            else:
                self.add(f"{folder}/{key}", lambda t, k=key: t.write_bytes(store.read_bytes(k)))
        return referenced

    def copy_dagster_home(self, home: Path) -> None:
        for path in sorted(p for p in home.rglob("*") if p.is_file()):
            name = f"dagster/home/{path.relative_to(home).as_posix()}"
            if path.suffix == ".db":
                self.add(name, lambda t, p=path: copy_sqlite(p, t))
            elif not path.name.endswith(SQLITE_SIDE_FILES):
                self.add(name, lambda t, p=path: shutil.copyfile(p, t))


def backup(dest: Path, data: str = "copy", force: bool = False) -> dict[str, Any]:
    """Write a snapshot of this home into ``dest``; the manifest."""
    if data not in ("copy", "reference"):
        raise BackupError(f"data must be 'copy' or 'reference', not {data!r}")
    check_destination(dest)
    instance = dg.DagsterInstance.get()
    active = instance.get_runs(filters=dg.RunsFilter(statuses=list(ACTIVE)))
    if active and not force:
        names = ", ".join(f"{r.job_name} {r.run_id[:8]}" for r in active)
        raise BackupError(
            f"runs in progress would write during the copy ({names}); wait for them or pass --force"
        )
    store, landing = ArtifactStoreResource().get_store(), LandingZoneResource().get_store()
    dest.mkdir(parents=True, exist_ok=True)
    writer = Writer(dest)
    home = Path(os.environ["DAGSTER_HOME"])
    writer.copy_dagster_home(home)
    url = postgres_url(instance)
    if url is not None:
        writer.add("dagster/instance.dump", lambda t: pg_dump(url, t))
    referenced = {
        "artifacts": writer.copy_store(store, "artifacts", data),
        "landing": writer.copy_store(landing, "landing", data),
    }
    manifest = {
        "created": datetime.now(UTC).isoformat(),
        "data": data,
        "artifacts_uri": store.uri,
        "landing_uri": landing.uri,
        "dagster_storage": "postgres" if url else "sqlite",
        "files": writer.files,
        "referenced": referenced,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def libpq(url: str) -> tuple[str, dict[str, str]]:
    """(the libpq connection URL without its password, the environment carrying it): a
    password never appears on a command line, where ``ps`` would show it."""
    parsed = make_url(url)
    env = {**os.environ, **({"PGPASSWORD": parsed.password} if parsed.password else {})}
    plain = parsed.set(drivername="postgresql", password=None)
    return plain.render_as_string(hide_password=False), env


def run_pg(tool: str, url: str, *args: str) -> None:
    """Run ``pg_dump`` or ``pg_restore`` on ``url``; a failure names the tool and its error."""
    dbname, env = libpq(url)
    result = subprocess.run([tool, *args, f"--dbname={dbname}"], env=env, capture_output=True,
                            text=True)  # fmt: skip
    if result.returncode != 0:
        raise BackupError(f"{tool} failed: {result.stderr.strip()[-2000:]}")


def pg_dump(url: str, target: Path) -> None:
    run_pg("pg_dump", url, "--format=custom", "--no-owner", f"--file={target}")


def pg_restore(url: str, dump: Path) -> None:
    run_pg("pg_restore", url, "--clean", "--if-exists", "--no-owner", str(dump))


def home_contents(store: ArtifactStore, landing: ArtifactStore, home: Path) -> list[str]:
    """What the target home already holds (a fresh dagster.yaml alone does not count)."""
    found = [f"{store.uri}/{k}" for k in list(store.files(""))[:3]]
    found += [f"{landing.uri}/{k}" for k in list(landing.files(""))[:3]]
    found += [str(p) for p in home.rglob("*") if p.is_file() and p.name != "dagster.yaml"][:3]
    return found


def restore(src: Path, force: bool = False) -> dict[str, Any]:
    """Bring the snapshot in ``src`` back into this (empty) home; the manifest."""
    if not (src / MANIFEST).is_file():
        raise BackupError(f"{src} holds no {MANIFEST}: not a backup, or an unfinished one")
    manifest = json.loads((src / MANIFEST).read_text())
    store, landing = ArtifactStoreResource().get_store(), LandingZoneResource().get_store()
    home = Path(os.environ["DAGSTER_HOME"])
    present = home_contents(store, landing, home)
    url = None
    if manifest["dagster_storage"] == "postgres":
        url, runs = restored_postgres(src)
        present += [f"{runs} runs in the instance's database"] if runs else []
    if present and not force:
        raise BackupError(
            f"the home is not empty ({', '.join(present)}, …); restore onto an "
            "empty home, or pass --force to write over it"
        )
    for name, meta in manifest["files"].items():
        if sha256_file(src / name) != meta["sha256"]:
            raise BackupError(f"{src / name} does not match its sha256 in the manifest")
    fetches = referenced_fetches(manifest, store, landing)
    for name in manifest["files"]:
        folder, _, key = name.partition("/")
        if folder == "artifacts":
            store.copy_in(key, src / name)
        elif folder == "landing":
            landing.copy_in(key, src / name)
        elif name.startswith("dagster/home/"):
            target = home / name.removeprefix("dagster/home/")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / name, target)
    for origin, target, key in fetches:
        target.write_bytes(key, origin.read_bytes(key))
    if url is not None:
        pg_restore(url, src / "dagster/instance.dump")
    return manifest


def restored_postgres(src: Path) -> tuple[str, int]:
    """(the database the backup's dagster.yaml names on this machine, with this machine's
    environment; how many runs it holds already), before anything is written."""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copyfile(src / "dagster/home/dagster.yaml", Path(tmp) / "dagster.yaml")
        with dg.DagsterInstance.from_config(tmp) as instance:
            url = postgres_url(instance)
            if url is None:
                raise BackupError(f"{src}: the backup's dagster.yaml does not name PostgreSQL")
            return url, len(instance.get_runs(limit=100))


def referenced_fetches(
    manifest: dict[str, Any], store: ArtifactStore, landing: ArtifactStore
) -> list[tuple[ArtifactStore, ArtifactStore, str]]:
    """Data backed up by reference that this home lacks, as (from, to, key): each is in the
    store it was referenced in with its size, or the restore stops before writing."""
    fetches = []
    for part, target in (("artifacts", store), ("landing", landing)):
        origin = ArtifactStore(manifest[f"{part}_uri"])
        for key, size in manifest["referenced"][part].items():
            if target.exists(key) and target.size(key) == size:
                continue
            if not origin.exists(key) or origin.size(key) != size:
                raise BackupError(
                    f"{origin.url(key)} (backed up by reference, {size} bytes) is gone or "
                    "changed: the backup cannot restore it"
                )
            fetches.append((origin, target, key))
    return fetches

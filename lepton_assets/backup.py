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
forced, and unpacks only what stays inside its home (see ``restore``).
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from sqlalchemy.engine import make_url

from lepton_core.store import ArtifactStore, check_key, sha256_bytes
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


def restore(
    src: Path, force: bool = False, referenced_from: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Bring the snapshot in ``src`` back into this (empty) home; the manifest.

    A contained unpack, in two passes: every entry is checked first (a name of its kinds that
    stays inside its target, a plain file in ``src`` reached through no symlink, its sha256;
    the backup's ``dagster.yaml`` naming Dagster's own classes alone; an instance dump of
    tables and their data alone), and only then is anything written, each file from the
    bytes that were checked, through no symlink. Data backed up by reference is read only
    from the stores the operator names in ``referenced_from`` (``lepton restore
    --referenced-from URI``), never from a place the manifest alone names.
    """
    manifest = read_manifest(src)
    store, landing = ArtifactStoreResource().get_store(), LandingZoneResource().get_store()
    home = Path(os.environ["DAGSTER_HOME"])
    plan = [planned(src, name, meta, store, landing, home) for name, meta in
            manifest["files"].items()]  # fmt: skip
    present = home_contents(store, landing, home)
    url = None
    if manifest["dagster_storage"] == "postgres":
        if DUMP not in manifest["files"]:
            raise BackupError(f"{src}: a backup of PostgreSQL storage without its {DUMP}")
        check_dump(src)
        url, runs = restored_postgres(src)
        present += [f"{runs} runs in the instance's database"] if runs else []
    if present and not force:
        raise BackupError(
            f"the home is not empty ({', '.join(present)}, …); restore onto an "
            "empty home, or pass --force to write over it"
        )
    fetches = referenced_fetches(manifest, store, landing, referenced_from)
    for target, key, source, digest in plan:
        if target is None:
            continue
        data = read_plain(source)
        if sha256_bytes(data) != digest:  # changed since it was checked
            raise BackupError(f"{source} changed during the restore; nothing more was written")
        write_to(target, key, data)
    for origin, target, key in fetches:
        target.write_bytes(key, origin.read_bytes(key))
    if url is not None:
        pg_restore(url, src / "dagster/instance.dump")
    return manifest


SHA256 = re.compile(r"^[0-9a-f]{64}$")
DUMP = "dagster/instance.dump"
# What a restored dagster.yaml may name as a class's module: Dagster's own packages.
DAGSTER_MODULE = re.compile(r"^dagster(_[a-z]+)?(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# The only kinds of entry an instance dump may hold: tables and their data (a function, a
# trigger or an extension would run code in the database).
DUMP_ENTRIES = {"SCHEMA", "TABLE", "TABLE DATA", "SEQUENCE", "SEQUENCE SET", "SEQUENCE OWNED BY",
                "DEFAULT", "INDEX", "CONSTRAINT", "FK CONSTRAINT", "COMMENT", "ACL"}  # fmt: skip


def read_manifest(src: Path) -> dict[str, Any]:
    """The backup's manifest, its shape checked (each file's size and sha256)."""
    path = src / MANIFEST
    if path.is_symlink() or not path.is_file():
        raise BackupError(f"{src} holds no {MANIFEST}: not a backup, or an unfinished one")
    manifest = json.loads(read_plain(path))
    files, referenced = manifest.get("files"), manifest.get("referenced")
    if (
        not isinstance(files, dict)
        or not all(
            isinstance(m, dict) and SHA256.match(str(m.get("sha256"))) for m in files.values()
        )
        or manifest.get("dagster_storage") not in ("sqlite", "postgres")
        or not isinstance(referenced, dict)
        or not all(isinstance(referenced.get(p, {}), dict) for p in ("artifacts", "landing"))
    ):
        raise BackupError(f"{path} is not a manifest Lepton wrote")
    return manifest


def read_plain(path: Path) -> bytes:
    """A file's bytes, refused when it is a symlink or not a regular file."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise BackupError(f"{path}: {exc.strerror} (a symlink is never followed)") from exc
    with os.fdopen(descriptor, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            raise BackupError(f"{path} is not a plain file")
        return fh.read()


def no_links(root: Path, relative: str) -> Path:
    """``root/relative``, refused when a part of it that exists is a symlink."""
    path = root
    for part in relative.split("/"):
        path = path / part
        if path.is_symlink():
            raise BackupError(f"{path} is a symlink: a restore neither follows nor makes one")
    return path


def planned(
    src: Path, name: str, meta: dict[str, Any], store: ArtifactStore, landing: ArtifactStore,
    home: Path,
) -> tuple[Path | ArtifactStore | None, str, Path, str]:  # fmt: skip
    """(where the entry goes: a store, the Dagster home, or nowhere for the instance dump,
    which pg_restore reads from the backup; its key there; its file in the backup; its
    sha256), after every check; a BackupError names the entry otherwise."""
    try:
        check_key(name)
    except ValueError as exc:
        raise BackupError(f"manifest entry {name!r}: {exc}") from exc
    if any(ord(c) < 32 for c in name):
        raise BackupError(f"manifest entry {name!r} holds a control character")
    folder, _, key = name.partition("/")
    targets: dict[str, Path | ArtifactStore] = {"artifacts": store, "landing": landing}
    target: Path | ArtifactStore | None = None
    if name.startswith("dagster/home/"):
        target, key = home, name.removeprefix("dagster/home/")
    elif name == DUMP:
        pass
    elif folder in targets and key:
        target = targets[folder]
    else:
        raise BackupError(f"manifest entry {name!r} is none of artifacts/, landing/, dagster/")
    source = no_links(src, name)
    data = read_plain(source)
    if sha256_bytes(data) != meta["sha256"]:
        raise BackupError(f"{source} does not match its sha256 in the manifest")
    if key == "dagster.yaml" and target is home:
        check_instance_yaml(data, source)
    if isinstance(target, Path):
        no_links(target, key)
    elif target is not None and target.is_local:
        no_links(Path(target.root), key)
    return target, key, source, meta["sha256"]


def write_to(target: Path | ArtifactStore, key: str, data: bytes) -> None:
    """``data`` at ``key`` of a store, or of a folder through no symlink."""
    if isinstance(target, ArtifactStore):
        target.write_bytes(key, data)
    else:
        path = target / key
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "wb") as fh:
            fh.write(data)


def check_instance_yaml(data: bytes, source: Path) -> None:
    """A backup's ``dagster.yaml`` may name classes of Dagster's own packages only: Dagster
    imports whatever module a ``module:`` key names."""

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            module = node.get("module")
            if module is not None and not DAGSTER_MODULE.match(str(module)):
                raise BackupError(f"{source} names module {module!r}, not one of Dagster's")
            if "()" in node or ("class" in node and module is None):
                raise BackupError(f"{source} names a class outside Dagster's storage settings")
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(data))


def check_dump(src: Path) -> None:
    """The instance dump holds tables and their data alone (``pg_restore --list``)."""
    listed = subprocess.run(["pg_restore", "--list", str(no_links(src, DUMP))],
                            capture_output=True, text=True)  # fmt: skip
    if listed.returncode != 0:
        raise BackupError(f"pg_restore --list failed: {listed.stderr.strip()[-2000:]}")
    for line in listed.stdout.splitlines():
        if not line.strip() or line.startswith(";"):
            continue
        # "<id>; <oid> <oid> <KIND> <schema> <name> <owner>"
        fields = line.split(";", 1)[1].split()[2:]
        kind = next((k for k in sorted(DUMP_ENTRIES, key=len, reverse=True)
                     if " ".join(fields).startswith(k + " ")), None)  # fmt: skip
        if kind is None:
            raise BackupError(f"{src / DUMP} holds {' '.join(fields[:3])!r}: only tables and "
                              "their data are restored")  # fmt: skip


def restored_postgres(src: Path) -> tuple[str, int]:
    """(the database the backup's dagster.yaml names on this machine, with this machine's
    environment; how many runs it holds already), before anything is written. The yaml
    was checked to name Dagster's own classes only."""
    with tempfile.TemporaryDirectory() as tmp:
        source = no_links(src, "dagster/home/dagster.yaml")
        data = read_plain(source)
        check_instance_yaml(data, source)
        (Path(tmp) / "dagster.yaml").write_bytes(data)
        with dg.DagsterInstance.from_config(tmp) as instance:
            url = postgres_url(instance)
            if url is None:
                raise BackupError(f"{src}: the backup's dagster.yaml does not name PostgreSQL")
            return url, len(instance.get_runs(limit=100))


def referenced_fetches(
    manifest: dict[str, Any],
    store: ArtifactStore,
    landing: ArtifactStore,
    referenced_from: tuple[str, ...],
) -> list[tuple[ArtifactStore, ArtifactStore, str]]:
    """Data backed up by reference that this home lacks, as (from, to, key): each is in the
    store it was referenced in with its size, or the restore stops before writing. That
    store must be one the operator named (a manifest could name any URL)."""
    fetches = []
    for part, target in (("artifacts", store), ("landing", landing)):
        wanted = manifest["referenced"][part]
        if not wanted:
            continue
        uri = str(manifest.get(f"{part}_uri", ""))
        if uri.rstrip("/") not in {u.rstrip("/") for u in referenced_from}:
            raise BackupError(
                f"the backup references {len(wanted)} {part} files in {uri}: name that store "
                f"with --referenced-from {uri} to read them from there"
            )
        if not uri.startswith(("file://", "s3://")):
            raise BackupError(f"{uri}: data is restored from file:// or s3:// stores only")
        origin = ArtifactStore(uri)
        for key, size in wanted.items():
            check_key(key)
            if target.exists(key) and target.size(key) == size:
                continue
            if not origin.exists(key) or origin.size(key) != size:
                raise BackupError(
                    f"{origin.url(key)} (backed up by reference, {size} bytes) is gone or "
                    "changed: the backup cannot restore it"
                )
            fetches.append((origin, target, key))
    return fetches

"""The artifact store: one fsspec URI (``file://…`` embedded, ``s3://bucket/prefix`` in production).

Every artifact of the lifecycle (Parquet batches, quarantine, datasets, checkpoints, models,
reports) is written here under a relative key (``keys.py`` names them). Writes are atomic — a
temporary file renamed into place locally, a single object PUT on S3 — so a reader never sees
half an artifact, and every write returns the content's sha256 so assets can record it.
"""

import hashlib
import io
import json
import os
import posixpath
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import fsspec
import polars as pl
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def check_key(key: str) -> str:
    """Reject keys that could escape the store: absolute paths, ``..``, empty segments."""
    if not key or key.startswith("/") or "\\" in key:
        raise ValueError(f"invalid artifact key {key!r}: must be a relative posix path")
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise ValueError(f"invalid artifact key {key!r}: '.', '..' and empty segments are refused")
    return key


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ArtifactStore:
    """Atomic, hashed reads and writes of artifacts under one fsspec URI."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = uri.rstrip("/")
        fs, root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")
        self.is_local = isinstance(fs, LocalFileSystem)
        if self.is_local:
            os.makedirs(self.root, exist_ok=True)

    def path(self, key: str) -> str:
        """Filesystem path (no protocol) of an artifact key."""
        return posixpath.join(self.root, check_key(key))

    def url(self, key: str) -> str:
        """Full URI of an artifact key, for metadata and links."""
        return f"{self.uri}/{check_key(key)}"

    def local_path(self, key: str) -> Path:
        """Local filesystem path of a key; only for stores on the local filesystem."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not a local store; no local path for {key!r}")
        return Path(self.path(key))

    # -- writes ------------------------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write ``data`` atomically under ``key``; returns its sha256."""
        path = self.path(key)
        if self.is_local:
            directory = os.path.dirname(path)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            except BaseException:
                os.unlink(tmp)
                raise
        else:
            # One PUT per object: S3 never exposes a partially written object.
            self.fs.pipe_file(path, data)
        return sha256_bytes(data)

    def write_text(self, key: str, text: str) -> str:
        return self.write_bytes(key, text.encode("utf-8"))

    def write_json(self, key: str, obj: Any) -> str:
        return self.write_text(key, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_parquet(self, key: str, df: pl.DataFrame, row_group_size: int | None = None) -> str:
        buf = io.BytesIO()
        # No statistics-free or time-dependent metadata: the same frame gives the same bytes,
        # so a rerun of a partition is byte-identical.
        df.write_parquet(buf, compression="zstd", row_group_size=row_group_size)
        return self.write_bytes(key, buf.getvalue())

    def copy_in(self, key: str, local_file: str | Path) -> str:
        """Upload a local file atomically; returns its sha256."""
        return self.write_bytes(key, Path(local_file).read_bytes())

    # -- reads -------------------------------------------------------------------------
    def read_bytes(self, key: str) -> bytes:
        data = self.fs.cat_file(self.path(key))
        if not isinstance(data, bytes):  # fsspec types it loosely; files always give bytes
            raise TypeError(f"{self.url(key)}: expected bytes, got {type(data).__name__}")
        return data

    def read_text(self, key: str) -> str:
        return self.read_bytes(key).decode("utf-8")

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key))

    def read_parquet(self, key: str, columns: list[str] | None = None) -> pl.DataFrame:
        """A Parquet artifact; with ``columns``, only those are read (from a local store,
        only their column chunks leave the disk; from an object store, the file is fetched
        whole and the rest is not decoded)."""
        if self.is_local:
            return pl.read_parquet(self.path(key), columns=columns)
        return pl.read_parquet(io.BytesIO(self.read_bytes(key)), columns=columns)

    def row_group_sizes(self, key: str) -> list[int]:
        """Rows in each row group of a Parquet artifact (its footer alone is read)."""
        with self.fs.open(self.path(key), "rb") as fh:
            meta = pq.ParquetFile(fh).metadata
            return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]

    def read_row_group(self, key: str, index: int) -> pl.DataFrame:
        """One row group of a Parquet artifact (on an object store, fetched by range)."""
        with self.fs.open(self.path(key), "rb") as fh:
            frame = pl.from_arrow(pq.ParquetFile(fh).read_row_group(index))
        assert isinstance(frame, pl.DataFrame)
        return frame

    def sha256(self, key: str) -> str:
        return sha256_bytes(self.read_bytes(key))

    def exists(self, key: str) -> bool:
        path = self.path(key)
        self.fs.invalidate_cache(path)
        return self.fs.exists(path)

    def folders(self) -> list[str]:
        """Names of the folders at the store's root, sorted (fresh on object stores too)."""
        self.fs.invalidate_cache(self.root)
        entries = self.fs.ls(self.root, detail=True)
        names = (
            posixpath.basename(e["name"].rstrip("/")) for e in entries if e["type"] == "directory"
        )
        return sorted(names)

    def size(self, key: str) -> int:
        """Size in bytes, without reading the artifact."""
        size = self.fs.size(self.path(key))
        if size is None:
            raise FileNotFoundError(f"{self.url(key)}: no size reported")
        return int(size)

    def list(self, prefix: str) -> list[str]:
        """Keys of the files (and symlinks) directly under ``prefix``, sorted; temporary files
        excluded."""
        base = self.path(prefix)
        # Object stores' listings are cached per filesystem instance (s3fs's dircache), and
        # fsspec reuses instances: forget them so a poll sees files that just landed.
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return []
        keys = []
        for entry in self.fs.ls(base, detail=True):
            # Symlinks (type "other" locally) are listed too: readers such as the landing
            # zone decide whether to follow them, rather than skipping them silently.
            if entry["type"] != "file" and not entry.get("islink"):
                continue
            name = posixpath.basename(entry["name"].rstrip("/"))
            if not name.startswith(".tmp-"):
                keys.append(f"{prefix.rstrip('/')}/{name}")
        return sorted(keys)

    def files(self, prefix: str, recursive: bool = True) -> dict[str, tuple[int, float]]:
        """Every file below ``prefix`` (at any depth, or directly under it; "" is the whole
        store): key -> (bytes, modified time in epoch seconds; local mtime or the object
        store's LastModified)."""
        base = self.path(prefix) if prefix else self.root
        self.fs.invalidate_cache(base)
        if not self.fs.exists(base):
            return {}
        found: dict[str, tuple[int, float]] = {}
        if recursive:
            listing = cast(dict[str, dict[str, Any]], self.fs.find(base, detail=True))
        else:
            entries = cast(list[dict[str, Any]], self.fs.ls(base, detail=True))
            listing = {e["name"]: e for e in entries if e["type"] == "file" or e.get("islink")}
        for path, info in listing.items():
            stamp = info.get("mtime") or info.get("LastModified") or 0.0
            seconds = stamp.timestamp() if isinstance(stamp, datetime) else float(stamp)
            found[path[len(self.root) + 1 :]] = (int(info.get("size") or 0), seconds)
        return found

    def delete(self, key: str) -> None:
        if self.exists(key):
            self.fs.rm_file(self.path(key))

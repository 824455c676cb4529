"""Personal data: columns a spec marks ``pii: {column: drop | hash}``.

``drop`` removes the column from every landing file before anything is written; ``hash``
replaces each value by its keyed hash (HMAC-SHA256, hex), so ids still join and categories
still group, but the clear value never reaches the artifact store, the training data, the
quarantine, Data Docs or the logs. The key comes from the environment (never from a file in
the project); the same key gives the same hashes on every day, so a rerun is idempotent and
``lepton predict`` hashes its input the same way.
"""

import hashlib
import hmac

import polars as pl

from lepton_core.spec import DatasetSpec

MIN_KEY_BYTES = 16


class PrivacyError(Exception):
    """Personal data cannot be handled as the spec says (e.g. no key for hashing)."""


def check_key(spec: DatasetSpec, key: str | None, key_name: str) -> bytes:
    """The hashing key as bytes; empty when the spec hashes nothing. Raises naming the
    variable when the spec hashes columns and the key is missing or short."""
    if not spec.hashed_columns:
        return b""
    if not key or len(key.encode()) < MIN_KEY_BYTES:
        raise PrivacyError(
            f"the spec hashes personal data {spec.hashed_columns}: set {key_name} to a secret "
            f"of at least {MIN_KEY_BYTES} bytes"
        )
    return key.encode()


def keyed_hash(values: pl.Series, key: bytes) -> pl.Series:
    """HMAC-SHA256 (hex) of each string; null stays null."""
    return pl.Series(
        values.name,
        [
            None if v is None else hmac.new(key, v.encode(), hashlib.sha256).hexdigest()
            for v in values.cast(pl.String).to_list()
        ],
        dtype=pl.String,
    )


def protect(frame: pl.DataFrame, spec: DatasetSpec, key: bytes) -> pl.DataFrame:
    """``frame`` without the dropped columns and with the hashed ones replaced; columns the
    frame does not have are left to the column checks that follow."""
    dropped = [c for c in spec.dropped_columns if c in frame.columns]
    hashed = [keyed_hash(frame[c], key) for c in spec.hashed_columns if c in frame.columns]
    return frame.drop(dropped).with_columns(hashed)

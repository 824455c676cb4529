"""The landing zone: where upstream systems drop raw files, one folder per day.

Layout: ``<landing uri>/<YYYY-MM-DD>/<file>.{parquet,csv,csv.gz}``. Lepton only reads it:
files are listed, hashed and recorded, never modified or deleted.
"""

import os
import re

import dagster as dg
from pydantic import Field

from lepton_core.store import ArtifactStore
from resources.artifact_store import lepton_home, setting

LANDING_SUFFIXES = (".parquet", ".csv", ".csv.gz")
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*$")


class LandingFileError(ValueError):
    """A landing file that must not be read: unsafe name, or a link out of the zone."""


class LandingZoneResource(dg.ConfigurableResource):
    """Read-only access to the landing zone.

    Where it is, the deployment says (never a run's config): ``LEPTON_LANDING_URI``, else
    ``file://$LEPTON_HOME/landing``.
    """

    sensor_days: int = Field(
        default=14,
        ge=1,
        description="how many of the newest partition days the landing sensor watches; older "
        "days are ingested with `lepton ingest --day` or a backfill",
    )

    def resolved_uri(self) -> str:
        return setting("LEPTON_LANDING_URI", f"file://{lepton_home() / 'landing'}")

    def get_store(self) -> ArtifactStore:
        return ArtifactStore(self.resolved_uri())

    def partition_files(self, partition_key: str) -> list[str]:
        """Keys of the landing files of one daily partition, sorted by name.

        Hidden files (a leading dot: uploads in progress, OS litter) are ignored; a name that
        is not plain (``..``, separators, odd characters) is refused, naming the file.
        """
        store = self.get_store()
        keys = []
        for key in store.list(partition_key):
            name = key.rsplit("/", 1)[-1]
            if name.startswith("."):
                continue
            if ".." in name or not SAFE_NAME.match(name):
                raise LandingFileError(
                    f"{store.url(key)}: unsafe landing file name (allowed: letters, digits, "
                    "'.', '_', '-', no '..')"
                )
            if key.endswith(LANDING_SUFFIXES):
                keys.append(key)
        return keys

    def read(self, key: str) -> bytes:
        """A landing file's bytes; a symlink that leads out of the landing zone is refused."""
        store = self.get_store()
        if store.is_local:
            real = os.path.realpath(store.path(key))
            root = os.path.realpath(store.root)
            if not real.startswith(root + os.sep):
                raise LandingFileError(
                    f"{store.url(key)}: resolves to {real}, outside the landing zone {root}"
                )
        return store.read_bytes(key)

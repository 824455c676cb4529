"""The landing zone: where upstream systems drop raw files, one folder per day.

Layout: ``<landing uri>/<YYYY-MM-DD>/<file>.{parquet,csv,csv.gz}``. Lepton only reads it:
files are listed, hashed and recorded, never modified or deleted.
"""

import dagster as dg
from pydantic import Field

from resources.artifact_store import ArtifactStore, lepton_home, setting

LANDING_SUFFIXES = (".parquet", ".csv", ".csv.gz")


class LandingZoneResource(dg.ConfigurableResource):
    """Read-only access to the landing zone.

    Resolution order: ``uri`` below, else ``LEPTON_LANDING_URI``, else
    ``file://$LEPTON_HOME/landing``.
    """

    uri: str = Field(
        default="",
        description="fsspec URI of the landing zone; empty: $LEPTON_LANDING_URI or "
        "file://$LEPTON_HOME/landing",
    )

    def resolved_uri(self) -> str:
        return setting(self.uri, "LEPTON_LANDING_URI", f"file://{lepton_home() / 'landing'}")

    def get_store(self) -> ArtifactStore:
        return ArtifactStore(self.resolved_uri())

    def partition_files(self, partition_key: str) -> list[str]:
        """Keys of the landing files of one daily partition, sorted by name."""
        store = self.get_store()
        return [k for k in store.list(partition_key) if k.endswith(LANDING_SUFFIXES)]

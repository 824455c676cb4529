"""The artifact store's Dagster face, and how settings resolve at run time.

The store itself (``lepton_core.store.ArtifactStore``) is Dagster-free, so Horovod ranks,
servers and notebooks use the same code.
"""

from pathlib import Path

import dagster as dg
from pydantic import Field

from lepton_core.id_index import IdIndex
from lepton_core.store import ArtifactStore

DEFAULT_HOME = ".lepton"


def lepton_home() -> Path:
    """The embedded root (``LEPTON_HOME``, default ``./.lepton``), resolved when called."""
    return Path(dg.EnvVar("LEPTON_HOME").get_value(DEFAULT_HOME) or DEFAULT_HOME).resolve()


def setting(explicit: str, env_name: str, default: str) -> str:
    """Resolve one setting: explicit resource config, else the environment variable, else default.

    Read at run time through ``dg.EnvVar`` (never at import time), so an unset variable falls
    back to the embedded default instead of failing config resolution.
    """
    return explicit or dg.EnvVar(env_name).get_value() or default


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where Lepton keeps its artifacts: a ``file://`` or ``s3://`` URI.

    Resolution order: ``uri`` below, else ``LEPTON_ARTIFACTS_URI``, else
    ``file://$LEPTON_HOME/artifacts`` (``LEPTON_HOME`` defaults to ``./.lepton``).
    """

    uri: str = Field(
        default="",
        description="fsspec URI of the artifact store; empty: $LEPTON_ARTIFACTS_URI or "
        "file://$LEPTON_HOME/artifacts",
    )

    def resolved_uri(self) -> str:
        return setting(self.uri, "LEPTON_ARTIFACTS_URI", f"file://{lepton_home() / 'artifacts'}")

    def get_store(self) -> ArtifactStore:
        return ArtifactStore(self.resolved_uri())

    def get_id_index(self) -> IdIndex:
        """The sample-id index at ``LEPTON_ID_INDEX_URL`` (a SQLAlchemy URL; it may hold a
        password, so it is read from the environment only), else SQLite under ``index/`` of
        a local store. A store on S3 needs the URL: a database every step can reach."""
        url = dg.EnvVar("LEPTON_ID_INDEX_URL").get_value() or ""
        if not url:
            store = self.get_store()
            if not store.is_local:
                raise ValueError(
                    f"the artifact store {store.uri} is not local: set LEPTON_ID_INDEX_URL to "
                    "a database every step can reach (e.g. postgresql://host/db)"
                )
            path = store.local_path("index/ids.sqlite")
            path.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{path}"
        return IdIndex(url)

"""The artifact store's Dagster face, and how settings resolve at run time.

The store itself (``lepton_core.store.ArtifactStore``) is Dagster-free, so Horovod ranks,
servers and notebooks use the same code.
"""

import re
from pathlib import Path

import dagster as dg

from lepton_core.id_index import IdIndex
from lepton_core.store import ArtifactStore

DEFAULT_HOME = ".lepton"


def lepton_home() -> Path:
    """The embedded root (``LEPTON_HOME``, default ``./.lepton``), resolved when called."""
    return Path(dg.EnvVar("LEPTON_HOME").get_value(DEFAULT_HOME) or DEFAULT_HOME).resolve()


def setting(env_name: str, default: str) -> str:
    """Resolve one deployment setting: the environment variable, else the default.

    Where data, secrets and code come from (the store, the landing zone, Label Studio, the
    project file) is the deployment's to say, never a run's: these are no resource fields a
    run config could set from the Launchpad or GraphQL. Read at run time through ``dg.EnvVar``
    (never at import time), so an unset variable falls back to the embedded default.
    """
    return dg.EnvVar(env_name).get_value() or default


URL = re.compile(r"^https?://[A-Za-z0-9.-]+(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@%/?-]*)?$")


def checked_url(url: str, variable: str) -> str:
    """``url`` when it is a plain http(s) URL (scheme, host, port, path and query of URL
    characters alone); else a ValueError naming ``variable``, never the value (it may hold a
    token)."""
    if not URL.match(url):
        raise ValueError(
            f"{variable} is not an http(s) URL of a host name or address, port and path"
        )
    return url


class ArtifactStoreResource(dg.ConfigurableResource):
    """Where Lepton keeps its artifacts: a ``file://`` or ``s3://`` URI, set by the
    deployment: ``LEPTON_ARTIFACTS_URI``, else ``file://$LEPTON_HOME/artifacts``
    (``LEPTON_HOME`` defaults to ``./.lepton``)."""

    def resolved_uri(self) -> str:
        return setting("LEPTON_ARTIFACTS_URI", f"file://{lepton_home() / 'artifacts'}")

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

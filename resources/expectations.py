"""Which engine runs the Great Expectations suite: a Dagster resource, set in the Launchpad
or ``Definitions``. The suite and both engines live in ``lepton_core.validation``.
"""

import dagster as dg
from pydantic import Field

from lepton_core.validation import Engine


class ExpectationsResource(dg.ConfigurableResource):
    """``engine="polars"`` (default) evaluates the expectations the Polars engine's contract
    covers (``lepton_core.validation.polars_engine.native_reason``) as Polars expressions and
    hands every other one, whole, to GX's pandas engine; ``"pandas"`` runs the whole suite on
    GX's own engine (the reference the Polars path is tested against)."""

    engine: Engine = Field(
        default="polars", description="polars: fast path for supported expectation types"
    )

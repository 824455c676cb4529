"""The Great Expectations runner as a Dagster resource: which engine runs the suite.

The suite, the engines and the result helpers live in ``lepton_core.validation``.
"""

from typing import Any

import dagster as dg
import great_expectations as gx
import polars as pl
from great_expectations.core import ExpectationSuiteValidationResult
from pydantic import Field

from lepton_core.validation.suite import Engine, run_suite


class ExpectationsResource(dg.ConfigurableResource):
    """Runs a GX expectation suite on a batch and returns GX's validation result.

    ``engine="polars"`` (default) evaluates the expectations the Polars engine's contract
    covers (``lepton_core.validation.polars_engine.native_reason``) as Polars expressions and
    hands every other one, whole, to GX's pandas engine; ``"pandas"`` runs the whole suite on
    GX's own engine (the reference the Polars path is tested against).
    """

    engine: Engine = Field(
        default="polars", description="polars: fast path for supported expectation types"
    )

    def run_suite(
        self,
        frame: pl.DataFrame,
        suite: gx.ExpectationSuite,
        parameters: dict[str, Any] | None = None,
    ) -> ExpectationSuiteValidationResult:
        """GX's result for every expectation of ``suite``, in the suite's order."""
        return run_suite(frame, suite, self.engine, parameters)

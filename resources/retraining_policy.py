"""When new validated data is worth a retraining."""

import dagster as dg
from pydantic import Field


class RetrainingPolicyResource(dg.ConfigurableResource):
    """Read by ``retraining_sensor``: how much new validated data starts a retraining."""

    min_new_days: int = Field(
        default=1,
        ge=1,
        description="validated days (new, or re-validated with new content) that the current "
        "training dataset lacks before training_job is requested",
    )

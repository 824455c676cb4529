"""Which dataset the pipeline runs on: the built-in digits spec or a user's YAML spec."""

import dagster as dg
from pydantic import Field

from lepton_assets.dataset_spec import DIGITS_SPEC, DatasetSpec
from resources.artifact_store import setting


class DatasetResource(dg.ConfigurableResource):
    """The dataset spec. Resolution order: ``spec_path``, else ``LEPTON_DATASET``, else digits."""

    spec_path: str = Field(
        default="", description="path of a dataset spec YAML; empty: $LEPTON_DATASET or digits"
    )

    def get_spec(self) -> DatasetSpec:
        path = setting(self.spec_path, "LEPTON_DATASET", "")
        return DatasetSpec.from_yaml(path) if path else DIGITS_SPEC

"""Which project the pipeline runs: a user's ``lepton.yaml``, a bare dataset spec, or the demo."""

import dagster as dg
from pydantic import Field

from lepton_core.privacy import check_key
from lepton_core.spec import DIGITS_PROJECT, DatasetSpec, Project
from resources.artifact_store import setting


class ProjectResource(dg.ConfigurableResource):
    """The project. Resolution order: ``project_path``, else ``LEPTON_PROJECT`` (a project
    file), else ``LEPTON_DATASET`` (a dataset spec, with built-in model and defaults), else
    the digits demo."""

    project_path: str = Field(
        default="",
        description="path of a project file (lepton.yaml); empty: $LEPTON_PROJECT, else "
        "$LEPTON_DATASET (a dataset spec), else the digits demo",
    )

    pii_key_env_var: str = Field(
        default="LEPTON_PII_KEY",
        description="environment variable holding the key that hashes personal-data columns "
        "(read through dg.EnvVar when a run needs it, never logged)",
    )

    def get_project(self) -> Project:
        path = setting(self.project_path, "LEPTON_PROJECT", "")
        if path:
            return Project.from_yaml(path)
        spec_path = setting("", "LEPTON_DATASET", "")
        return Project(dataset=DatasetSpec.from_yaml(spec_path)) if spec_path else DIGITS_PROJECT

    def get_spec(self) -> DatasetSpec:
        return self.get_project().dataset

    def get_pii_key(self, spec: DatasetSpec) -> bytes:
        """The key for the spec's hashed columns (empty when it hashes none); raises naming
        the variable when it is needed and unset."""
        if not spec.hashed_columns:
            return b""
        return check_key(spec, dg.EnvVar(self.pii_key_env_var).get_value(), self.pii_key_env_var)

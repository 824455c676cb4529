"""Which project the pipeline runs: a user's ``lepton.yaml``, a bare dataset spec, or the demo."""

import dagster as dg

from lepton_core.privacy import check_key
from lepton_core.spec import DIGITS_PROJECT, DatasetSpec, Project
from resources.artifact_store import setting

PII_KEY_VARIABLE = "LEPTON_PII_KEY"


class ProjectResource(dg.ConfigurableResource):
    """The project, set by the deployment (a project file names the code a run imports, so
    no run config can pick another): ``LEPTON_PROJECT`` (a project file), else
    ``LEPTON_DATASET`` (a dataset spec, with built-in model and defaults), else the digits
    demo. The key that hashes personal-data columns is ``LEPTON_PII_KEY`` (read through
    ``dg.EnvVar`` when a run needs it, never logged)."""

    def get_project(self) -> Project:
        path = setting("LEPTON_PROJECT", "")
        if path:
            return Project.from_yaml(path)
        spec_path = setting("LEPTON_DATASET", "")
        return Project(dataset=DatasetSpec.from_yaml(spec_path)) if spec_path else DIGITS_PROJECT

    def get_spec(self) -> DatasetSpec:
        return self.get_project().dataset

    def get_pii_key(self, spec: DatasetSpec) -> bytes:
        """The key for the spec's hashed columns (empty when it hashes none); raises naming
        the variable when it is needed and unset."""
        if not spec.hashed_columns:
            return b""
        return check_key(spec, dg.EnvVar(PII_KEY_VARIABLE).get_value(), PII_KEY_VARIABLE)

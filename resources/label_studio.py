"""Label Studio, the annotation tool: where it runs and the API token to use.

Where it runs is the deployment's to say, since the token is sent there: ``LEPTON_LABEL_STUDIO_URL``
(an http(s) URL), else ``http://127.0.0.1:8090`` (where ``scripts/label_studio.sh`` starts it);
no run config can change it. The token comes from
``LEPTON_LABEL_STUDIO_TOKEN`` only (an ``EnvVar``: it is never in run config, metadata or a
log). Without it, annotation is off:
``annotation_tasks`` fails saying so, and ``annotation_sensor`` skips.
"""

import dagster as dg

from lepton_core.labeling import LabelStudio
from resources.artifact_store import checked_url, setting

TOKEN_VARIABLE = "LEPTON_LABEL_STUDIO_TOKEN"


class LabelStudioResource(dg.ConfigurableResource):
    """Label Studio at the deployment's URL, with the deployment's token."""

    def resolved_url(self) -> str:
        url = setting("LEPTON_LABEL_STUDIO_URL", "http://127.0.0.1:8090")
        return checked_url(url, "LEPTON_LABEL_STUDIO_URL")

    def configured(self) -> bool:
        return bool(dg.EnvVar(TOKEN_VARIABLE).get_value())

    def client(self) -> LabelStudio:
        token = dg.EnvVar(TOKEN_VARIABLE).get_value()
        if not token:
            raise ValueError(
                f"{TOKEN_VARIABLE} is not set: give Lepton a Label Studio API token "
                f"(Label Studio at {self.resolved_url()})"
            )
        return LabelStudio(self.resolved_url(), token)

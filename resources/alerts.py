"""Alerts: a structured log line for every failed run, and a webhook post if one is set."""

import json
import urllib.request
from typing import Any

import dagster as dg
from pydantic import Field

from resources.artifact_store import checked_url

WEBHOOK_VARIABLE = "LEPTON_ALERT_WEBHOOK_URL"


class AlertWebhookResource(dg.ConfigurableResource):
    """Posts alerts as JSON to a webhook (Slack-compatible: the text is in ``text``).

    The URL usually carries a token, so it is the deployment's: read through ``dg.EnvVar``
    from ``LEPTON_ALERT_WEBHOOK_URL`` when an alert is sent (no run config can change it), and
    never logged. Unset: log only.
    """

    timeout_s: float = Field(default=10.0, gt=0, description="seconds to wait for the webhook")

    def post(self, alert: dict[str, Any]) -> bool:
        """Send ``alert``; False when no webhook is configured. Raises on a failed post."""
        url = dg.EnvVar(WEBHOOK_VARIABLE).get_value()
        if not url:
            return False
        checked_url(url, WEBHOOK_VARIABLE)
        body = json.dumps({"text": alert["summary"], "alert": alert}).encode()
        request = urllib.request.Request(
            url, data=body, headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310
            if response.status >= 300:
                raise RuntimeError(f"alert webhook answered HTTP {response.status}")
        return True


def is_wrapper(error: Any) -> bool:
    """Dagster's own wrapper of an error, or its "Exceeded max_retries of N" (whose cause is
    the error the last attempt failed with): neither says what broke."""
    cls_name, message = error.cls_name or "", error.message or ""
    return (
        "dagster" in cls_name.lower()
        or cls_name == "RetryRequested"
        or message.startswith("Exceeded max_retries of")
    )


def own_error(error: Any) -> Any:
    """Of a chain of Dagster ``SerializableErrorInfo``, the outermost error that is not a
    wrapper (``is_wrapper``): the one that says what broke (an ingestion error names the
    file; its cause, e.g. Polars' message, does not). The innermost when every one wraps."""
    while error is not None and error.cause is not None and is_wrapper(error):
        error = error.cause
    return error


def first_line(error: Any) -> str:
    """An error's first message line (at most 500 characters); empty for none."""
    lines = (error.message or "").strip().splitlines() if error is not None else []
    return lines[0][:500] if lines else ""


def one_line(text: str, limit: int = 800) -> str:
    """A message's non-blank lines joined by " | " (at most ``limit`` characters): a
    validation error names its fields on the lines after its first."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:limit]

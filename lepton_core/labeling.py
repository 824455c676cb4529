"""Label Studio as the annotation tool: candidates go out as tasks, finished annotations come
back as the rows of an annotation batch.

A task holds one candidate row: its id, day, reason and score, its current label, every
feature (shown to the annotator as text) and, where there is one, the model's suggestion as a
pre-annotation. The labeling interface is one single-choice question over the spec's
classes. An annotation comes back as the row with the chosen label and its provenance
(``rows.PROVENANCE``: task, annotator, time, reason), the latest annotation of a task
winning.

The client speaks Label Studio's REST API with an API token (``Authorization: Token …``);
the token is sent in that header only and never appears in a message or a log.
"""

import json
from typing import Any
from xml.sax.saxutils import quoteattr

import polars as pl
import requests

from lepton_core.rows import ANNOTATION_PREFIX, PROVENANCE
from lepton_core.spec import DatasetSpec

TIMEOUT_S = 30
ID_FIELD = "lepton_id"  # the task field holding the row's id (Label Studio owns "id")


class LabelStudioError(RuntimeError):
    """Label Studio refused or could not be reached; names the request, never the token."""


class LabelStudio:
    """The few calls Lepton makes, on one project per dataset name."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.session = url.rstrip("/"), requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.session.request(method, self.url + path, timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as exc:
            raise LabelStudioError(f"{method} {self.url}{path}: {type(exc).__name__}") from None
        if response.status_code >= 400:
            raise LabelStudioError(
                f"{method} {self.url}{path}: HTTP {response.status_code} {response.text[:300]}"
            )
        return response.json() if response.content else None

    def project(self, spec: DatasetSpec) -> int:
        """The id of the project ``lepton-<dataset>``, created on first use."""
        title = f"lepton-{spec.name}"
        for project in self.call("GET", "/api/projects", params={"title": title})["results"]:
            if project["title"] == title:
                return project["id"]
        created = self.call(
            "POST", "/api/projects", json={"title": title, "label_config": label_config(spec)}
        )
        return created["id"]

    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations."""
        params = {"exportType": "JSON", "download_all_tasks": "true"}
        return self.call("GET", f"/api/projects/{project}/export", params=params)

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> int:
        if not tasks:
            return 0
        return self.call("POST", f"/api/projects/{project}/import", json=tasks)["task_count"]


def label_config(spec: DatasetSpec) -> str:
    """One single-choice question over the classes, beside the row shown as text."""
    if spec.classes is None:
        raise ValueError(f"dataset {spec.name}: annotation in Label Studio needs classes")
    choices = "".join(f"<Choice value={quoteattr(str(c))}/>" for c in spec.classes)
    return (
        '<View><Text name="row" value="$row"/>'
        '<Header value="Current label: $current_label, reason: $reason"/>'
        f'<Choices name="label" toName="row" choice="single">{choices}</Choices></View>'
    )


def task_of(row: dict[str, Any], spec: DatasetSpec, day: str) -> dict[str, Any]:
    """A candidate row (``annotation.candidates``) as a Label Studio task."""
    features = [*spec.feature_columns, *spec.categorical_columns]
    data = {
        ID_FIELD: str(row[spec.id_column]),
        "day": day,
        "reason": row["reason"],
        "score": row["score"],
        "current_label": "" if row.get(spec.label_column) is None else str(row[spec.label_column]),
        "features": {c: row.get(c) for c in features},
        "row": "\n".join(f"{c}: {row.get(c)}" for c in features),
    }
    task: dict[str, Any] = {"data": data}
    if row.get("suggestion") is not None:
        choice = {"choices": [str(row["suggestion"])]}
        result = {"from_name": "label", "to_name": "row", "type": "choices", "value": choice}
        task["predictions"] = [
            {"model_version": "lepton", "score": row["score"], "result": [result]}
        ]
    return task


def chosen_label(annotation: dict[str, Any]) -> str | None:
    for result in annotation.get("result", []):
        if result.get("from_name") == "label" and result["value"].get("choices"):
            return result["value"]["choices"][0]
    return None


def annotation_rows(
    tasks: list[dict[str, Any]], spec: DatasetSpec, after: int
) -> tuple[pl.DataFrame, int]:
    """(the rows of the annotations made after annotation id ``after``, latest per task,
    with provenance; the highest annotation id seen). Cancelled or empty annotations are
    left out."""
    rows, last = [], after
    for task in tasks:
        done = [
            a for a in task.get("annotations", [])
            if a["id"] > after and not a.get("was_cancelled") and chosen_label(a) is not None
        ]  # fmt: skip
        if not done:
            continue
        latest = max(done, key=lambda a: a["id"])
        last = max(last, latest["id"])
        data = task["data"]
        rows.append(
            {
                spec.id_column: data[ID_FIELD],
                spec.label_column: chosen_label(latest),
                **data["features"],
                PROVENANCE[0]: str(task["id"]),
                PROVENANCE[1]: annotator(latest),
                PROVENANCE[2]: latest.get("updated_at") or latest["created_at"],
                PROVENANCE[3]: data["reason"],
            }
        )
    return pl.DataFrame(rows, infer_schema_length=None), last


def batch_key(day: str, after: int, last: int) -> str:
    """The landing key of the annotations after id ``after`` up to ``last``."""
    return f"{day}/{ANNOTATION_PREFIX}{after + 1:08d}-{last:08d}.parquet"


def annotator(annotation: dict[str, Any]) -> str:
    """Who annotated: Label Studio's user (its email where the export carries it)."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        return str(who.get("email") or who.get("id"))
    return json.dumps(who)

"""Run config for the Launchpad, derived from the core's settings models.

Each field of ``TrainingSettings``, ``CompressionSettings`` and ``EvaluationSettings`` becomes
an optional field of a ``dg.Config`` with the same description: a value set in the run
config wins, an unset one takes the project file's value, else the built-in default. One
mechanism for the three, so the Launchpad and the project file never disagree on a knob.
"""

import typing
from collections.abc import Mapping
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field, ValidationError, create_model

from lepton_core.spec import CompressionSettings, EvaluationSettings, Project, TrainingSettings
from resources.horovod_launcher import HorovodLauncherResource


def optional_config(settings: type[BaseModel], name: str, doc: str) -> type[dg.Config]:
    fields: dict[str, Any] = {}
    for field_name, field in settings.model_fields.items():
        annotation: Any = field.annotation
        if typing.get_origin(annotation) is typing.Literal:
            # Dagster has no optional Literal config type; the settings model checks the value.
            annotation = str
            choices = "|".join(map(str, typing.get_args(field.annotation)))
            description = f"{field.description} ({choices})"
        else:
            description = field.description or ""
        fields[field_name] = (
            annotation | None,
            Field(
                default=None,
                description=f"{description}; unset: the project's value, else {field.default!r}",
            ),
        )
    config = create_model(name, __base__=dg.Config, __doc__=doc, **fields)
    return typing.cast(type[dg.Config], config)


TrainingConfig = optional_config(
    TrainingSettings, "TrainingConfig", "Knobs of one training run, shown in the Launchpad."
)
CompressionConfig = optional_config(
    CompressionSettings, "CompressionConfig", "How much to compress and how to choose."
)
EvaluationConfig = optional_config(
    EvaluationSettings, "EvaluationConfig", "The rules a candidate must meet to be promoted."
)

S = typing.TypeVar("S", bound=BaseModel)

# The resources whose fields a run's config may set (the others take the deployment's
# settings only); checked with the ops' knobs before any work.
CONFIGURED_RESOURCES: dict[str, type[dg.ConfigurableResource]] = {
    "horovod": HorovodLauncherResource,
}


# The ops that take run config, and the project's section each one's knobs override.
CONFIGURED_OPS = {
    "trained_model": "training",
    "compressed_model": "compression",
    "evaluation_report": "evaluation",
}


def merged(project_value: S, values: dict[str, Any], op: str) -> tuple[S | None, list[str]]:
    """The project's settings with ``values`` (an op's run config) replacing its fields, or
    None and what is wrong, each as ``op.field: reason (got value)``."""
    try:
        return type(project_value).model_validate({**project_value.model_dump(), **values}), []
    except ValidationError as exc:
        return None, described(exc, op)


def described(exc: ValidationError, prefix: str) -> list[str]:
    """Each error as ``prefix.field: reason (got value)``."""
    return [
        f"{prefix}.{'.'.join(map(str, e['loc']))}: {e['msg']} (got {e.get('input')!r})"
        for e in exc.errors()
    ]


def resource_problems(run_config: Mapping[str, Any]) -> list[str]:
    """What is wrong with the run config of the resources a run may configure (the Horovod
    launcher's hosts, interfaces, key path and rank variables have strict patterns)."""
    problems = []
    for key, resource in CONFIGURED_RESOURCES.items():
        values = ((run_config.get("resources") or {}).get(key) or {}).get("config") or {}
        try:
            resource(**values)
        except ValidationError as exc:
            problems += described(exc, f"resources.{key}")
    return problems


def refuse(problems: list[str]) -> None:
    """A value Dagster's config schema lets through but the settings refuse (``epochs: 0``,
    ``amp: "foo"``) fails without retries (the same config fails the same way again), naming
    every such field."""
    if problems:
        raise dg.Failure(
            description=f"invalid run config: {'; '.join(problems)}", allow_retries=False
        )


def effective(project_value: S, config: dg.Config, op: str) -> S:
    """The project's settings with every field the run config sets replaced (validated)."""
    settings, problems = merged(project_value, config.model_dump(exclude_none=True), op)
    refuse(problems)
    return typing.cast(S, settings)


def check_run_config(run_config: Mapping[str, Any], project: Project) -> None:
    """Every op's and configurable resource's run config checked; the training job's first step
    calls it, so a bad knob fails the run before any work (and before the training slot is
    taken) rather than in the step that reads it."""
    ops, problems = run_config.get("ops") or {}, []
    for op, section in CONFIGURED_OPS.items():
        values = {
            k: v for k, v in ((ops.get(op) or {}).get("config") or {}).items() if v is not None
        }
        problems += merged(getattr(project, section), values, op)[1]
    refuse(problems + resource_problems(run_config))

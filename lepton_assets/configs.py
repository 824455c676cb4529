"""Run config for the Launchpad, derived from the core's settings models.

Each field of ``TrainingSettings``, ``CompressionSettings`` and ``EvaluationSettings`` becomes
an optional field of a ``dg.Config`` with the same description: a value set in the run
config wins, an unset one takes the project file's value, else the built-in default. One
mechanism for the three, so the Launchpad and the project file never disagree on a knob.
"""

import typing
from typing import Any

import dagster as dg
from pydantic import BaseModel, Field, create_model

from lepton_core.spec import CompressionSettings, EvaluationSettings, TrainingSettings


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


def effective(project_value: S, config: dg.Config) -> S:
    """The project's settings with every field the run config sets replaced (validated)."""
    merged = {**project_value.model_dump(), **config.model_dump(exclude_none=True)}
    return type(project_value).model_validate(merged)

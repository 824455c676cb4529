"""What a dataset looks like: columns, classes, value ranges, input shape.

The spec drives every stage: which columns ingestion keeps and how it types them, which
Great Expectations suite validation builds, the model's input shape and class count.
The digits demo (scikit-learn's bundled 8x8 handwritten digits) is the built-in spec.
"""

import math
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class DatasetSpec(BaseModel):
    """A classification dataset: one id column, one label column, numeric feature columns."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="short name, used in keys")
    id_column: str = Field(description="unique sample id; drives the train/val/test split")
    label_column: str
    classes: list[int] = Field(min_length=2, description="the allowed label values")
    feature_columns: list[str] = Field(min_length=1)
    feature_min: float
    feature_max: float
    input_shape: list[int] | None = Field(
        default=None, description="model input shape, e.g. [1, 8, 8]; None: a flat vector"
    )
    quarantine_threshold: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="largest fraction of a partition's rows that may be quarantined before "
        "the partition's blocking check fails",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetSpec":
        if self.feature_min > self.feature_max:
            raise ValueError(f"feature_min {self.feature_min} > feature_max {self.feature_max}")
        names = [self.id_column, self.label_column, *self.feature_columns]
        if len(set(names)) != len(names):
            raise ValueError("id, label and feature column names must all differ")
        if self.input_shape is not None and math.prod(self.input_shape) != len(
            self.feature_columns
        ):
            raise ValueError(
                f"input_shape {self.input_shape} holds {math.prod(self.input_shape)} values "
                f"but there are {len(self.feature_columns)} feature columns"
            )
        return self

    @property
    def columns(self) -> list[str]:
        return [self.id_column, self.label_column, *self.feature_columns]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSpec":
        return cls.model_validate(yaml.safe_load(Path(path).read_text()))


DIGITS_SPEC = DatasetSpec(
    name="digits",
    id_column="sample_id",
    label_column="label",
    classes=list(range(10)),
    feature_columns=[f"pixel_{i:02d}" for i in range(64)],
    feature_min=0.0,
    feature_max=16.0,
    input_shape=[1, 8, 8],
)

"""What a dataset looks like: columns, classes, value ranges, input shape.

The spec drives every stage: which columns ingestion keeps and how it types them, which
Great Expectations suite validation builds, the model's input shape and class count.
The digits demo (scikit-learn's bundled 8x8 handwritten digits) is the built-in spec.
"""

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ExtraExpectation(BaseModel):
    """Any Great Expectations expectation, by its type name and arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(pattern=r"^expect_[a-z0-9_]+$", examples=["expect_column_mean_to_be_between"])
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DatasetSpec(BaseModel):
    """A classification dataset: one id column, one label column, numeric feature columns.

    Features are listed (``feature_columns``) or named by ``feature_prefix`` and
    ``feature_count`` (``f00`` … ``f29``: the number zero-padded to the count's width).
    ``feature_min``/``feature_max`` bound every feature (None: unbounded) and
    ``feature_ranges`` overrides them per feature.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="short name, used in keys")
    id_column: str = Field(description="unique sample id; drives the train/val/test split")
    label_column: str
    classes: list[int] = Field(min_length=2, description="the allowed label values")
    feature_columns: list[str] = Field(min_length=1)
    feature_min: float | None = None
    feature_max: float | None = None
    feature_ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
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
    feature_psi_threshold: float | None = Field(
        default=0.25,
        ge=0.0,
        description="largest PSI of any feature against the training "
        "reference before the drift check fails; None disables",
    )
    label_psi_threshold: float | None = Field(
        default=0.25,
        ge=0.0,
        description="largest PSI of the label distribution against the "
        "training reference before the drift check fails; None disables",
    )
    on_unreadable_file: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="a landing file that cannot be parsed fails the partition (fail) or is "
        "copied whole to quarantine/<day>/files/ while the other files go on (quarantine)",
    )
    extra_expectations: list[ExtraExpectation] = Field(
        default_factory=list, description="further GX expectations, run by GX's own engine"
    )

    @model_validator(mode="before")
    @classmethod
    def _expand_prefix(cls, data: Any) -> Any:
        if isinstance(data, dict) and "feature_prefix" in data:
            data = dict(data)
            prefix, count = data.pop("feature_prefix"), data.pop("feature_count", None)
            if "feature_columns" in data:
                raise ValueError("give feature_columns or feature_prefix/feature_count, not both")
            if not isinstance(count, int) or count < 1:
                raise ValueError("feature_prefix needs a positive integer feature_count")
            width = len(str(count - 1))
            data["feature_columns"] = [f"{prefix}{i:0{width}d}" for i in range(count)]
        return data

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetSpec":
        names = [self.id_column, self.label_column, *self.feature_columns]
        if len(set(names)) != len(names):
            raise ValueError("id, label and feature column names must all differ")
        unknown = sorted(set(self.feature_ranges) - set(self.feature_columns))
        if unknown:
            raise ValueError(f"feature_ranges names columns that are not features: {unknown}")
        for column in self.feature_columns:
            low, high = self.feature_range(column)
            if low is not None and high is not None and low > high:
                raise ValueError(f"{column}: minimum {low} > maximum {high}")
        if self.input_shape is not None and math.prod(self.input_shape) != len(
            self.feature_columns
        ):
            raise ValueError(
                f"input_shape {self.input_shape} holds {math.prod(self.input_shape)} values "
                f"but there are {len(self.feature_columns)} feature columns"
            )
        return self

    def feature_range(self, column: str) -> tuple[float | None, float | None]:
        return self.feature_ranges.get(column, (self.feature_min, self.feature_max))

    @property
    def columns(self) -> list[str]:
        return [self.id_column, self.label_column, *self.feature_columns]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSpec":
        """Load a spec; errors name the file and every invalid field."""
        try:
            data = yaml.safe_load(Path(path).read_text())
            return cls.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ValueError(f"invalid dataset spec {path}: {exc}") from exc


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

"""What a dataset looks like, and what a user's project brings.

``DatasetSpec`` drives every stage: which columns ingestion keeps and how it types them,
which Great Expectations suite validation builds, what the model is fed. ``Project`` is the
``lepton.yaml`` a user writes: the dataset (inline or a path), the model factory and loss,
and defaults for training, compression and evaluation. The digits demo is the built-in
project.
"""

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
# The labels of a classification, all of one type: integers, strings or booleans. (YAML
# reads an unquoted yes/no/on/off as a boolean: quote labels that are words.)
Classes = list[StrictInt] | list[StrictStr] | list[StrictBool]


class ExtraExpectation(BaseModel):
    """Any Great Expectations expectation, by its type name and arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str = Field(pattern=r"^expect_[a-z0-9_]+$", examples=["expect_column_mean_to_be_between"])
    kwargs: dict[str, Any] = Field(default_factory=dict)


class ImageSpec(BaseModel):
    """An image feature: a column holding a file path relative to the landing day's folder.

    Ingestion decodes each file with Pillow, converts it to ``channels`` (1: grayscale, 3:
    RGB) and resizes it to ``size`` (height, width); the model sees values in [0, 1].
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str
    size: tuple[int, int] = Field(description="height, width after resizing")
    channels: Literal[1, 3] = 1

    @property
    def shape(self) -> list[int]:
        return [self.channels, *self.size]


class DatasetSpec(BaseModel):
    """A dataset: an id column, a target, and typed feature columns.

    Numeric features are listed (``feature_columns``) or named by ``feature_prefix`` and
    ``feature_count`` (``f00`` … ``f29``). ``categorical_columns`` hold strings (a vocabulary
    is learned from the train split; an unseen value goes to an unknown bucket).
    ``nullable_columns`` may be null: numeric ones are imputed, categorical ones are unknown.
    ``image`` names a column of image files.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", description="short name, used in keys")
    task: Literal["classification", "regression"] = "classification"
    id_column: str = Field(description="unique sample id; drives the train/val/test split")
    label_column: str = Field(
        description="the target: a class (integer, string or boolean) or a number"
    )
    classes: Classes | None = Field(
        default=None,
        min_length=2,
        description="the allowed labels, all of one type (classification only); a model "
        "predicts one of them, and its output i is classes[i]",
    )
    feature_columns: list[str] = Field(default_factory=list, description="numeric features")
    categorical_columns: list[str] = Field(default_factory=list)
    nullable_columns: list[str] = Field(default_factory=list)
    image: ImageSpec | None = None
    impute: Literal["median", "mean"] = Field(
        default="median", description="how a null numeric value is filled (train statistic)"
    )
    feature_min: float | None = None
    feature_max: float | None = None
    feature_ranges: dict[str, tuple[float | None, float | None]] = Field(default_factory=dict)
    input_shape: list[int] | None = Field(
        default=None, description="shape of the numeric features, e.g. [1, 8, 8]; None: flat"
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
        description="largest PSI of the target's distribution against the "
        "training reference before the drift check fails; None disables",
    )
    extra_columns: Literal["fail", "ignore"] = Field(
        default="fail",
        description="a landing file with columns the spec does not name fails, naming them "
        "(fail), or is read without them, listed in the asset's metadata (ignore)",
    )
    trim_whitespace: bool = Field(
        default=True,
        description="strip spaces around numbers in CSV files before parsing them (text "
        "columns are never changed)",
    )
    pii: dict[str, Literal["drop", "hash"]] = Field(
        default_factory=dict,
        description="personal-data columns: drop (a column the spec does not otherwise "
        "name, removed at ingestion) or hash (the id or a categorical column, replaced by "
        "a keyed HMAC-SHA256 at ingestion; key from $LEPTON_PII_KEY)",
    )
    on_unreadable_file: Literal["fail", "quarantine"] = Field(
        default="fail",
        description="a landing file that cannot be parsed fails the partition (fail) or is "
        "copied whole to quarantine/<day>/files/ while the other files go on (quarantine)",
    )
    extra_expectations: list[ExtraExpectation] = Field(
        default_factory=list, description="further GX expectations, run by GX's own engine"
    )
    suite_parameters: dict[str, Any] = Field(
        default_factory=dict,
        description='GX suite parameters: an expectation argument {"$PARAMETER": "name"} '
        "takes the value given here (GX's own now() and its arithmetic need none)",
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
        if (self.task == "classification") != (self.classes is not None):
            raise ValueError("classes is required for classification and refused for regression")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes has repeated labels: {self.classes}")
        if not self.feature_columns and not self.categorical_columns and self.image is None:
            raise ValueError("no features: give feature_columns, categorical_columns or image")
        names = self.columns
        if len(set(names)) != len(names):
            raise ValueError("id, label and feature column names must all differ")
        unknown = sorted(set(self.feature_ranges) - set(self.feature_columns))
        if unknown:
            raise ValueError(
                f"feature_ranges names columns that are not numeric features: {unknown}"
            )
        unknown = sorted(
            set(self.nullable_columns) - {*self.feature_columns, *self.categorical_columns}
        )
        if unknown:
            raise ValueError(f"nullable_columns names columns that are not features: {unknown}")
        self._check_pii()
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

    def _check_pii(self) -> None:
        hashable = {self.id_column, *self.categorical_columns}
        wrong = sorted(c for c in self.hashed_columns if c not in hashable)
        if wrong:
            raise ValueError(f"pii: hash applies to the id or categorical columns, not {wrong}")
        named = sorted(c for c in self.dropped_columns if c in self.columns)
        if named:
            raise ValueError(f"pii: drop applies to columns the spec does not use, not {named}")

    @property
    def hashed_columns(self) -> list[str]:
        return [c for c, how in self.pii.items() if how == "hash"]

    @property
    def dropped_columns(self) -> list[str]:
        return [c for c, how in self.pii.items() if how == "drop"]

    def feature_range(self, column: str) -> tuple[float | None, float | None]:
        return self.feature_ranges.get(column, (self.feature_min, self.feature_max))

    @property
    def columns(self) -> list[str]:
        """Every column a landing file must have, in order."""
        image = [self.image.column] if self.image else []
        return [
            self.id_column,
            self.label_column,
            *self.feature_columns,
            *self.categorical_columns,
            *image,
        ]

    @property
    def input_names(self) -> list[str]:
        """The model's inputs, in the order its ``forward`` takes them."""
        present = {
            "numeric": bool(self.feature_columns),
            "categorical": bool(self.categorical_columns),
            "image": self.image is not None,
        }
        return [name for name, there in present.items() if there]

    @classmethod
    def from_yaml(cls, path: str | Path) -> "DatasetSpec":
        """Load a spec; errors name the file and every invalid field."""
        try:
            return cls.model_validate(read_yaml(path, "dataset spec"))
        except ValidationError as exc:
            raise ValueError(f"invalid dataset spec {path}: {exc}") from exc


def read_yaml(path: str | Path, what: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"invalid {what} {path}: {exc}") from exc


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


# -- run settings: defaults a project file may change, and runs may override ----------------
class TrainingSettings(BaseModel):
    """Knobs of one training run."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=25, ge=1, description="most passes over the training split")
    batch_size: int = Field(default=32, ge=1, description="samples per step on each process")
    learning_rate: float = Field(
        default=1e-3,
        gt=0,
        description="Adam learning rate of one process; scaled by the number of processes "
        "(Horovod's linear scaling rule) after the warm-up",
    )
    warmup_epochs: int = Field(
        default=1, ge=0, description="epochs to ramp the learning rate up to its scaled value"
    )
    patience: int = Field(
        default=5,
        ge=0,
        description="stop after this many epochs without a validation-loss gain and keep the "
        "best epoch's weights; 0 trains all epochs",
    )
    fp16_allreduce: bool = Field(
        default=False, description="compress gradients to fp16 for the allreduce"
    )
    amp: Literal["bf16", "fp16", "off"] = Field(
        default="bf16",
        description="automatic mixed precision on CUDA (on CPU only with amp_on_cpu); fp16 "
        "with a gradient scaler, checkpointed with the model",
    )
    amp_on_cpu: bool = Field(
        default=False,
        description="apply amp on CPU too (CPU autocast): for CPUs with bf16 units; on others "
        "it is slower than float32",
    )
    loader_workers: int | None = Field(
        default=None,
        ge=0,
        description="processes per rank that read and encode batches (0: the training "
        "process does); unset: 0 on CPU, on CUDA the rank's share of the cores less one, at "
        "most 4. The batches are the same for any number",
    )
    use_tuned: bool = Field(
        default=True,
        description="train with the best configuration of the latest tuning study, where one "
        "exists (a value set in the run config still wins)",
    )
    seed: int = Field(default=0, description="seed of initialization and shuffling")


def worker_job(
    settings: TrainingSettings,
    model_info: dict[str, Any],
    output_prefix: str,
    checkpoint_prefix: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The job ``train_worker`` reads: the run's settings, the model's description (which
    names its dataset version and loss), where the model goes and where its checkpoints go
    (beside it unless given); ``extra``: a tuning ``trial`` or a ``distill`` section."""
    return {
        **settings.model_dump(),
        "model_info": model_info,
        "loss": model_info.get("loss"),
        "dataset_version": model_info["dataset_version"],
        "output_prefix": output_prefix,
        "checkpoint_prefix": checkpoint_prefix or f"{output_prefix}/checkpoints",
        **extra,
    }


class CompressionSettings(BaseModel):
    """How much to compress and how to choose the variant."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(
        default=0.5, ge=0.0, lt=1.0, description="fraction of weights zeroed by magnitude pruning"
    )
    finetune_epochs: int = Field(
        default=2, ge=0, description="epochs of fine-tuning after magnitude or structured pruning"
    )
    structured_amount: float = Field(
        default=0.5,
        ge=0.0,
        lt=1.0,
        description="fraction of each hidden layer's neurons/channels removed by structured "
        "pruning",
    )
    max_accuracy_drop: float = Field(
        default=1.0,
        ge=0.0,
        description="classification: largest validation-accuracy drop (in points) against "
        "fp32 that a chosen variant may have",
    )
    max_rmse_increase: float = Field(
        default=0.02,
        ge=0.0,
        description="regression: largest relative validation-RMSE increase against fp32 that "
        "a chosen variant may have",
    )
    objective: Literal["size", "latency"] = Field(
        default="size",
        description="what the chosen variant minimizes within the allowed loss: gzipped size "
        "on disk, or batch-1 p50 latency on CPU",
    )
    distill_epochs: int = Field(
        default=0,
        ge=0,
        description="epochs of a Horovod job training the distilled variant: a student taught "
        "by the trained model; 0 trains no student",
    )
    student_factory: str | None = Field(
        default=None,
        pattern=IMPORT_PATH,
        description="the student's model factory; unset: the teacher's built-in mlp or cnn "
        "(for another teacher the built-in network for the inputs), narrowed to at most "
        "student_width of the teacher's parameters",
    )
    student_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of student_factory"
    )
    student_width: float = Field(
        default=0.25,
        gt=0.0,
        le=1.0,
        description="a built-in student's widths start at this share of the teacher's (or the "
        "defaults) and halve until it has at most this share of the teacher's parameters",
    )
    distill_temperature: float = Field(
        default=4.0, gt=0.0, description="softens teacher and student outputs (Hinton et al.)"
    )
    distill_weight: float = Field(
        default=0.7,
        ge=0.0,
        le=1.0,
        description="share of the student's loss from the teacher (softened outputs; for a "
        "regression its predictions); the rest from the labels",
    )


# Training knobs a study may search; a model factory's keyword arguments are ``kwargs.<name>``.
TUNABLE = ("learning_rate", "batch_size", "epochs", "warmup_epochs", "patience")


def kwarg_name(name: str) -> str:
    """``widths`` of a search parameter named ``kwargs.widths``; empty for other names."""
    return name.removeprefix("kwargs.") if name.startswith("kwargs.") else ""


class SearchParam(BaseModel):
    """One dimension of a search space: a range (``low``..``high``, integers if both are,
    ``log`` for a log scale, ``step`` for a grid) or a list of ``choices`` (any JSON values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    low: StrictInt | float | None = None
    high: StrictInt | float | None = None
    log: bool = False
    step: StrictInt | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def one_kind(self) -> "SearchParam":
        ranged = self.low is not None or self.high is not None
        if self.choices is not None:
            if ranged or self.log or self.step is not None:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices:
                raise ValueError("choices is empty")
            return self
        if self.low is None or self.high is None:
            raise ValueError("a range needs low and high (or give choices)")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log scale needs low > 0 (got {self.low})")
        return self

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one this dimension can take."""
        if self.choices is not None:
            return value in self.choices
        assert self.low is not None and self.high is not None
        return isinstance(value, int | float) and self.low <= value <= self.high

    @property
    def integer(self) -> bool:
        return all(isinstance(v, int) for v in (self.low, self.high, self.step or 1))


class TuningSettings(BaseModel):
    """A hyperparameter study: what to search, how long, and how to stop poor trials."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    space: dict[str, SearchParam] = Field(
        description=f"what to search: training knobs ({', '.join(TUNABLE)}) and the model "
        "factory's keyword arguments as kwargs.<name>",
    )
    trials: int = Field(default=8, ge=1, description="trials in the study, counted over runs")
    timeout_s: float = Field(
        default=3600, gt=0, description="no new trial starts after this many seconds of a run"
    )
    pruner: Literal["hyperband", "median", "none"] = Field(
        default="hyperband", description="how unpromising trials are stopped, epoch by epoch"
    )
    heartbeat_s: int = Field(
        default=10, ge=1, description="a running trial's heartbeat; two missed mark it failed"
    )
    enqueue: list[dict[str, Any]] = Field(
        default_factory=list,
        description="configurations the study tries first, in order (e.g. today's settings, "
        "so the best found is at least as good); parameters left out are sampled",
    )

    @model_validator(mode="after")
    def known_names(self) -> "TuningSettings":
        if not self.space:
            raise ValueError("the search space is empty: name at least one parameter")
        unknown = [n for n in self.space if n not in TUNABLE and not kwarg_name(n)]
        if unknown:
            raise ValueError(
                f"unknown search parameters {unknown}: use {', '.join(TUNABLE)} or kwargs.<name>"
            )
        outside = sorted({k for trial in self.enqueue for k in trial if k not in self.space})
        if outside:
            raise ValueError(f"enqueue names parameters outside the search space: {outside}")
        for trial in self.enqueue:
            for name, value in trial.items():
                if not self.space[name].holds(value):
                    raise ValueError(f"enqueue: {name}={value!r} is outside its search space")
        return self


class EvaluationSettings(BaseModel):
    """The rules a candidate must meet to be promoted."""

    model_config = ConfigDict(extra="forbid")

    min_accuracy: float = Field(
        default=0.9, ge=0.0, le=1.0, description="classification: floor on test accuracy"
    )
    max_regression: float = Field(
        default=0.005,
        ge=0.0,
        description="classification: largest test-accuracy drop against the champion",
    )
    max_class_regression: float = Field(
        default=0.05,
        ge=0.0,
        description="classification: largest drop of any one class's F1 against the champion",
    )
    min_r2: float = Field(default=0.0, le=1.0, description="regression: floor on test R²")
    max_rmse: float | None = Field(
        default=None, gt=0, description="regression: ceiling on test RMSE; None: no ceiling"
    )
    max_rmse_regression: float = Field(
        default=0.05,
        ge=0.0,
        description="regression: largest relative test-RMSE increase against the champion",
    )


class ModelRef(BaseModel):
    """A model factory by import path, and the keyword arguments it is called with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    factory: str = Field(pattern=IMPORT_PATH, examples=["my_package.models:build"])
    kwargs: dict[str, Any] = Field(default_factory=dict)


class Project(BaseModel):
    """A user's ``lepton.yaml``: what to train on, what to train, and the defaults.

    ``dataset`` is a spec inline or a path to a spec YAML (relative to the project file);
    ``code_path`` (relative to the project file) is put on the import path of every process,
    Horovod ranks included, before ``model.factory`` and ``loss`` are imported. Without
    ``model`` the built-in network for the inputs is used (``cnn`` for one image or a
    3-dimensional numeric shape, else ``mlp``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: DatasetSpec
    model: ModelRef | None = None
    loss: str | None = Field(default=None, pattern=IMPORT_PATH)
    code_path: str | None = None
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    compression: CompressionSettings = Field(default_factory=CompressionSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    tuning: TuningSettings | None = None

    @property
    def model_ref(self) -> ModelRef:
        return self.model or ModelRef(factory=default_factory(self.dataset))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Project":
        """Load a project file; errors name the file and every bad or unknown field.

        Relative ``dataset`` and ``code_path`` are resolved against the file's folder.
        """
        path = Path(path)
        data = read_yaml(path, "project file")
        if not isinstance(data, dict):
            raise ValueError(f"invalid project file {path}: expected a mapping at the top")
        base = path.resolve().parent
        try:
            if isinstance(data.get("dataset"), str):
                data = {**data, "dataset": read_yaml(base / data["dataset"], "dataset spec")}
            if isinstance(data.get("code_path"), str):
                data = {**data, "code_path": str((base / data["code_path"]).resolve())}
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid project file {path}: {exc}") from exc


def default_factory(spec: DatasetSpec) -> str:
    """The built-in network for a dataset's inputs."""
    image_like = spec.image is not None or (
        spec.input_shape is not None and len(spec.input_shape) == 3
    )
    if image_like and spec.input_names in (["image"], ["numeric"]):
        return "lepton_core.models:cnn"
    return "lepton_core.models:mlp"


DIGITS_PROJECT = Project(dataset=DIGITS_SPEC)

"""Own data that no one here designed: column order, target scale, string and boolean labels,
category values a later day brings, and one typing path for every door a row comes through.

The property-based test at the end runs generated projects through the whole lifecycle
twice (ingest and validate through the real assets, dataset, training on one Horovod
process, compression, evaluation against the champion, promotion, predict).
"""

import io
from pathlib import Path
from typing import Any

import dagster as dg
import horovod.torch as hvd
import numpy as np
import polars as pl
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lepton_assets.definitions import resources
from lepton_assets.ingestion import raw_batches
from lepton_assets.validation import validated_batches
from lepton_core.compress import compress_model
from lepton_core.data import (
    ROW_GROUP_BYTES,
    accepted_partitions,
    build_dataset,
    encode_target,
    load_split,
    load_tensors,
    read_dataset_info,
    split_keys,
    train_statistics,
)
from lepton_core.evaluate import evaluate_candidate, headline
from lepton_core.images import IMAGE_PIXELS
from lepton_core.models import load_model, model_description, model_inputs, model_scores
from lepton_core.predict import predict_frame
from lepton_core.registry import current_champion, promote
from lepton_core.rows import read_landing_file, typed_features
from lepton_core.spec import (
    CompressionSettings,
    DatasetSpec,
    EvaluationSettings,
    ImageSpec,
    Project,
    TrainingSettings,
)
from lepton_core.store import ArtifactStore
from lepton_core.streaming import ShardStream
from lepton_core.train_worker import train


@pytest.fixture(scope="module", autouse=True)
def horovod_single_process():
    hvd.init()  # no horovodrun: one rank, size 1
    yield
    hvd.shutdown()


# -- the lifecycle in one process, on the Dagster-free core -------------------------------
def validated_day(frame: pl.DataFrame, spec: DatasetSpec, store: ArtifactStore, day: str):
    """A day as validation leaves it, for tests that start after validation."""
    store.write_parquet(f"validated/{day}.parquet", frame)
    store.write_json(
        f"validated/{day}.json", {"partition": day, "sha256": f"{day}-test", "check_passed": True}
    )


def train_and_evaluate(
    store: ArtifactStore, project: Project, run: str, epochs: int = 6
) -> dict[str, Any]:
    """Dataset from the accepted days, one-process training, compression, evaluation against
    the champion, promotion when blessed; the evaluation."""
    version, info = build_dataset(store, project.dataset, accepted_partitions(store)[0])
    job = {
        **TrainingSettings(
            epochs=epochs, batch_size=32, learning_rate=0.01, patience=0
        ).model_dump(),
        "model_info": model_description(project, info),
        "loss": None,
        "dataset_version": version,
        "output_prefix": f"models/{run}",
        "checkpoint_prefix": f"checkpoints/{run}",
    }
    train(store, job, None)
    compressed = compress_model(store, f"models/{run}", CompressionSettings(finetune_epochs=0))
    pointer = {
        "prefix": compressed["chosen"]["prefix"],
        "source": f"models/{run}",
        "variants": f"compressed/{compressed['name']}",
    }
    relaxed = EvaluationSettings(
        min_accuracy=0.0, max_regression=1.0, max_class_regression=1.0, min_r2=-1e9,
        max_rmse_regression=1e9,
    )  # fmt: skip
    ev, report = evaluate_candidate(store, pointer, relaxed)
    if ev["blessed"]:
        entry = {"model_prefix": ev["candidate_model"], "task": ev["task"]}
        promote(store, {**entry, "metrics": headline(ev), "report": report}, run)
    return ev


def r2_at_scale(artifacts: ArtifactStore, scale: float) -> float:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 * np.sin(3 * x[:, 0]) + 3.0) * scale
    frame = pl.DataFrame({"id": [f"r{i}" for i in range(1500)], "y": y})
    frame = frame.with_columns(pl.Series(f"x{j}", x[:, j]) for j in range(3))
    spec = DatasetSpec(
        name="scaled", task="regression", id_column="id", label_column="y",
        feature_columns=["x0", "x1", "x2"],
    )  # fmt: skip
    validated_day(frame, spec, artifacts, "2026-03-01")
    ev = train_and_evaluate(artifacts, Project(dataset=spec), f"scale-{scale:g}", epochs=8)
    return ev["candidate"]["r2"]


# -- 1. categorical columns in any order ------------------------------------------------------
def test_categorical_columns_are_fed_in_the_specs_order_not_alphabetically(
    artifacts: ArtifactStore,
):
    spec = DatasetSpec(
        name="order", id_column="id", label_column="y", classes=[0, 1],
        categorical_columns=["plan", "region", "device"],
    )  # fmt: skip
    rows = 60
    frame = pl.DataFrame(
        {
            "id": [f"o{i}" for i in range(rows)],
            "y": [i % 2 for i in range(rows)],
            "plan": [["basic", "plus", "pro"][i % 3] for i in range(rows)],
            "region": [["e", "n", "s", "w", "x"][i % 5] for i in range(rows)],
            "device": [["ios", "web"][i % 2] for i in range(rows)],
        }
    )
    validated_day(frame, spec, artifacts, "2026-03-01")
    version, info = build_dataset(artifacts, spec, accepted_partitions(artifacts)[0])
    inputs, _ = load_tensors(artifacts, version, "train")
    codes = inputs[0]
    vocab = info["preprocessing"]["categorical"]
    train = load_split(artifacts, version, "train")
    # Column i of the tensor is the spec's i-th column, coded by its own vocabulary.
    for i, column in enumerate(spec.categorical_columns):
        expected = [vocab[column].index(v) + 1 for v in train[column].to_list()]
        assert codes[:, i].tolist() == expected, column
    description = model_description(Project(dataset=spec), {**info, "version": version})
    assert description["dataset_info"]["categorical_cardinalities"] == [4, 6, 3]


# -- 2. a retrain after a new category value: the champion scores with its own vocabulary --
def test_a_new_category_value_retrains_and_the_champion_is_scored_with_its_own_encoding(
    artifacts: ArtifactStore,
):
    spec = DatasetSpec(
        name="newcat", id_column="id", label_column="y", classes=["stay", "churn"],
        feature_columns=["x"], categorical_columns=["region"],
    )  # fmt: skip
    rng = np.random.default_rng(1)

    def day(n: int, regions: list[str], tag: str) -> pl.DataFrame:
        region = [regions[i % len(regions)] for i in range(n)]
        x = rng.normal(size=n)
        flip = [(r == "b") ^ (v > 0) for r, v in zip(region, x, strict=True)]
        label = ["churn" if f else "stay" for f in flip]
        return pl.DataFrame({"id": [f"{tag}{i}" for i in range(n)], "y": label, "x": x,
                             "region": region})  # fmt: skip

    validated_day(day(600, ["a", "b"], "d1-"), spec, artifacts, "2026-03-01")
    first = train_and_evaluate(artifacts, Project(dataset=spec), "first")
    assert first["blessed"] and first["candidate"]["accuracy"] > 0.8
    # The new day brings region "c": the candidate's vocabulary has one value more.
    validated_day(day(600, ["a", "b", "c"], "d2-"), spec, artifacts, "2026-03-02")
    second = train_and_evaluate(artifacts, Project(dataset=spec), "second")
    assert second["champion_model"] == first["candidate_model"]
    # The champion is scored on the new test rows, encoded with its own two-value vocabulary.
    champion, champion_info = load_model(artifacts, first["candidate_model"])
    assert champion_info["preprocessing"]["categorical"]["region"] == ["a", "b"]
    rows = load_split(artifacts, second["dataset_version"], "test")
    codes = model_inputs(champion_info, rows)[1]
    assert codes.max() == 2 and (codes[:, 0] == 0).sum() == (rows["region"] == "c").sum()
    truth = [["stay", "churn"].index(v) for v in rows["y"]]
    scores = model_scores(champion, champion_info, model_inputs(champion_info, rows))
    accuracy = (scores.argmax(1) == torch.tensor(truth)).double().mean()
    assert second["champion"]["accuracy"] == pytest.approx(float(accuracy), abs=1e-5)
    assert [r["class"] for r in second["candidate"]["per_class"]] == ["stay", "churn"]


# -- 3. regression targets in any unit ---------------------------------------------------------
def test_regression_trains_as_well_in_millions_as_in_units(artifacts: ArtifactStore):
    r2 = {scale: r2_at_scale(artifacts, scale) for scale in (1e-3, 1.0, 1e6)}
    assert min(r2.values()) > 0.9, r2
    assert max(r2.values()) - min(r2.values()) < 0.05, r2


def test_the_target_is_standardized_for_training_and_the_statistics_read_each_file_once(
    artifacts: ArtifactStore, monkeypatch: pytest.MonkeyPatch
):
    spec = DatasetSpec(
        name="money", task="regression", id_column="id", label_column="price",
        feature_columns=["a", "b"],
    )  # fmt: skip
    frame = pl.DataFrame(
        {
            "id": ["p1", "p2", "p3", "p4"],
            "price": [1e6, 2e6, 3e6, 6e6],
            "a": [1.0, 2, 3, 4],
            "b": [0.0, 1, 0, 1],
        }  # fmt: skip
    )
    artifacts.write_parquet("t/1.parquet", frame[:2])
    artifacts.write_parquet("t/2.parquet", frame[2:])
    reads: list[tuple[str, list[str] | None]] = []
    read = artifacts.read_parquet

    def counted(key: str, columns: list[str] | None = None) -> pl.DataFrame:
        reads.append((key, columns))
        return read(key, columns=columns)

    monkeypatch.setattr(artifacts, "read_parquet", counted)
    preprocessing, summary = train_statistics(artifacts, spec, ["t/1.parquet", "t/2.parquet"])
    # One read per file (only the columns needed), not one per column.
    assert reads == [(k, ["a", "b", "price"]) for k in ("t/1.parquet", "t/2.parquet")]
    # Sample standard deviation, as for features: sqrt(14 / 3) millions.
    assert preprocessing["target"] == {"mean": 3e6, "std": pytest.approx(2160246.899)}
    assert summary["price"] is not None and summary["a"] is not None
    scaled = encode_target(frame, spec, preprocessing)
    assert scaled.dtype == torch.float32
    assert scaled.tolist() == pytest.approx([-0.925820, -0.462910, 0.0, 1.388730], abs=1e-5)


# -- 4. string and boolean classes -------------------------------------------------------------
@pytest.mark.parametrize(
    ("classes", "cell", "value"),
    [(["no", "yes"], " yes", "yes"), ([False, True], "TRUE", True), ([0, 1], " 1 ", 1)],
)
def test_labels_of_every_declared_type_are_read_and_mapped(classes: list, cell: str, value: Any):
    spec = DatasetSpec(
        name="labels", id_column="id", label_column="y", classes=classes, feature_columns=["x"]
    )
    text = f"id,y,x\nr1,{cell},1.5\n"
    frame, _ = read_landing_file("day/file.csv", text.encode(), spec)
    # Text labels are never trimmed or changed; a boolean or integer is parsed as its type.
    expected = cell if isinstance(value, str) else value
    assert frame["y"].to_list() == [expected] and frame["_parse_errors"].to_list() == [[]]
    bad, _ = read_landing_file("day/file.csv", b"id,y,x\nr1,maybe,1.5\n", spec)
    if isinstance(value, str):
        assert bad["y"].to_list() == ["maybe"]  # text: validation's class set rejects it
    else:
        assert bad["_parse_errors"].to_list() == [[f"parse(y: {bad.schema['y']})"]]
    with pytest.raises(ValueError, match="repeated labels"):
        DatasetSpec(name="x", id_column="i", label_column="y", classes=["a", "a"],
                    feature_columns=["x"])  # fmt: skip
    with pytest.raises(ValueError, match="classes"):
        DatasetSpec.model_validate({"name": "x", "id_column": "i", "label_column": "y",
                                    "classes": [0, "a"], "feature_columns": ["x"]})  # fmt: skip


# -- 5. one typing path: a row scores the same whichever door it comes through ------------------
def test_scoring_types_rows_as_ingestion_does():
    spec = DatasetSpec(
        name="doors", id_column="id", label_column="y", classes=[0, 1],
        feature_columns=["count", "x"], categorical_columns=["city"], nullable_columns=["x"],
        feature_ranges={"count": (0, 10)},
    )  # fmt: skip
    text = b"id,y,count,x,city\nr1,1, 3 ,,Oslo\n"
    ingested, _ = read_landing_file("f.csv", text, spec)
    scored = typed_features(pl.read_csv(io.BytesIO(text), infer_schema=False), spec)
    assert scored.to_dicts() == ingested.select(spec.columns[2:]).to_dicts()
    assert scored.to_dicts() == [{"count": 3.0, "x": None, "city": "Oslo"}]
    wrong = pl.DataFrame({"count": ["3", "three"], "x": ["1", "2"], "city": [None, "a"]})
    with pytest.raises(ValueError, match=r"2 rows break a rule; row 0: not_null\(city\)"):
        typed_features(wrong, spec)
    wrong = wrong.with_columns(city=pl.lit("a"))
    with pytest.raises(ValueError, match=r"row 1: parse\(count: Float64\)"):
        typed_features(wrong, spec)


# -- 16. generated projects through the whole lifecycle, retrain included ----------------------
NAMES = ["zeta", "alpha", "mu", "beta", "omega", "kappa", "delta"]
CLASS_SETS = [[0, 1, 2], ["cat", "dog"], [True, False], ["no", "yes", "maybe"]]


@st.composite
def projects(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.permutations(NAMES))
    numeric = draw(st.integers(0, 3))
    categorical = draw(st.integers(0 if numeric else 1, 2))
    features, categories = names[:numeric], names[numeric : numeric + categorical]
    nullable = draw(st.lists(st.sampled_from(features + categories), unique=True, max_size=2))
    task = draw(st.sampled_from(["classification", "regression"]))
    spec: dict[str, Any] = {
        "name": "generated", "task": task, "id_column": "uid", "label_column": "target",
        "feature_columns": features, "categorical_columns": categories,
        "nullable_columns": nullable, "feature_psi_threshold": None, "label_psi_threshold": None,
    }  # fmt: skip
    if task == "classification":
        spec["classes"] = draw(st.sampled_from(CLASS_SETS))
    return {
        "spec": spec,
        "scale": draw(st.sampled_from([1e-3, 1.0, 1e3, 1e6])),
        "seed": draw(st.integers(0, 2**16)),
        "order": draw(st.permutations(["uid", "target", *features, *categories])),
    }


def generated_day(case: dict[str, Any], day: int, rows: int, new_value: bool) -> pl.DataFrame:
    """Rows with a learnable target; on a later day some rows hold a category never seen."""
    spec, rng = case["spec"], np.random.default_rng([case["seed"], day])
    signal = np.zeros(rows)
    data: dict[str, Any] = {"uid": [f"d{day}-{i}" for i in range(rows)]}
    for j, column in enumerate(spec["feature_columns"]):
        values = rng.normal(size=rows) * 10 ** (j - 1)
        signal += values / 10 ** (j - 1) * (1 if j % 2 else -1)
        data[column] = values
    for j, column in enumerate(spec["categorical_columns"]):
        codes = rng.integers(0, 3, rows)
        signal += np.array([-1.0, 0.0, 1.5])[codes]
        values = [f"v{c}" for c in codes]
        if new_value and j == 0:
            values[:8] = ["never-seen"] * 8
        data[column] = values
    for column in spec["nullable_columns"]:
        data[column] = pl.Series(data[column]).set(pl.Series(rng.random(rows) < 0.05), None)
    if spec["task"] == "classification":
        classes = spec["classes"]
        edges = np.quantile(signal, np.linspace(0, 1, len(classes) + 1)[1:-1])
        data["target"] = [classes[i] for i in np.searchsorted(edges, signal)]
    else:
        data["target"] = (signal + 3.0) * case["scale"]
    return pl.DataFrame(data).select(case["order"])


def ingest(home: Path, instance: dg.DagsterInstance, day: str, frame: pl.DataFrame, csv: bool):
    folder = home / "landing" / day
    folder.mkdir(parents=True)
    if csv:
        frame.write_csv(folder / "rows.csv")
    else:
        frame.write_parquet(folder / "rows.parquet")
    result = dg.materialize(
        [raw_batches, validated_batches], resources=resources, instance=instance, partition_key=day
    )
    assert result.success


@pytest.mark.slow
@settings(
    max_examples=10,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=projects())
def test_generated_projects_survive_the_lifecycle_and_a_retrain_with_new_categories(
    case: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
):
    home = tmp_path_factory.mktemp("own")
    for name in ("LEPTON_DATASET", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("LEPTON_HOME", str(home))
    project_file = home / "lepton.yaml"
    project_file.write_text(yaml.safe_dump({"dataset": case["spec"]}))
    monkeypatch.setenv("LEPTON_PROJECT", str(project_file))
    project = Project.from_yaml(project_file)
    store = ArtifactStore(f"file://{home / 'artifacts'}")
    with dg.instance_for_test() as instance:
        ingest(home, instance, "2026-04-01", generated_day(case, 1, 300, False), csv=True)
        ingest(home, instance, "2026-04-02", generated_day(case, 2, 300, False), csv=False)
        first = train_and_evaluate(store, project, "first")
        ingest(home, instance, "2026-04-03", generated_day(case, 3, 300, True), csv=True)
        second = train_and_evaluate(store, project, "second")
    assert first["blessed"] and second["champion_model"] == first["candidate_model"]
    champion = current_champion(store)
    assert second["blessed"] and champion is not None
    assert champion["model_prefix"] == second["candidate_model"]
    # `lepton predict`'s door on the test rows, as text in another column order, scores them
    # exactly as evaluation did.
    rows = load_split(store, second["dataset_version"], "test")
    spec = DatasetSpec.model_validate(read_dataset_info(store, second["dataset_version"])["spec"])
    given_rows = rows.select(list(reversed(spec.columns))).cast(pl.String)
    predicted, model = predict_frame(store, given_rows)
    assert model == second["candidate_model"]
    truth, guess = rows["target"].to_list(), predicted["prediction"].to_list()
    if spec.classes is not None:
        accuracy = float(np.mean([t == g for t, g in zip(truth, guess, strict=True)]))
        assert set(guess) <= set(spec.classes)
        assert accuracy == pytest.approx(second["candidate"]["accuracy"], abs=1e-5)
    else:
        rmse = float(np.sqrt(np.mean((np.array(guess) - np.array(truth)) ** 2)))
        assert rmse == pytest.approx(second["candidate"]["rmse"], rel=1e-4)


# -- 10. image rows: a rank's memory bounded by bytes, not rows -------------------------------
def test_large_images_make_row_groups_bounded_in_bytes(artifacts: ArtifactStore):
    """300 RGB images of 224x224 (45 MB of pixels in one day): row groups of at most 16 MiB,
    so a rank's buffer of a few groups is bounded whatever the image size."""
    spec = DatasetSpec(
        name="big", task="regression", id_column="id", label_column="y",
        image=ImageSpec(column="path", size=(224, 224), channels=3),
    )  # fmt: skip
    rows, width = 300, 3 * 224 * 224
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, width, dtype=np.uint8).tobytes() for _ in range(rows)]
    frame = pl.DataFrame(
        {
            "id": [f"i{i}" for i in range(rows)],
            "y": rng.normal(size=rows),
            "path": [f"img/{i}.png" for i in range(rows)],
        }  # fmt: skip
    ).with_columns(pl.Series(IMAGE_PIXELS, pixels, dtype=pl.Binary))
    validated_day(frame, spec, artifacts, "2026-03-01")
    version, info = build_dataset(artifacts, spec, accepted_partitions(artifacts)[0])
    sizes = [n for key in split_keys(info, "train") for n in artifacts.row_group_sizes(key)]
    assert max(sizes) * width <= ROW_GROUP_BYTES and len(sizes) >= 2
    assert sum(sizes) == info["rows"]["train"]
    stream = ShardStream(artifacts, info, "train", 32, 0, 1, shuffle=True)
    images = [batch[0] for batch in stream]
    assert sum(len(x) for x in images) == info["rows"]["train"]
    assert images[0].shape[1:] == (3, 224, 224) and float(images[0].max()) <= 1.0

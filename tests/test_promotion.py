"""What keeps a model out of production: the champion asset re-reads the verdict, and a
champion trained for other data is not compared with the candidate."""

import dagster as dg
import pytest

from lepton_assets.champion import champion_model
from lepton_assets.definitions import resources
from lepton_assets.demo import digits_frame
from lepton_core.data import dataset_description
from lepton_core.evaluate import check_comparable
from lepton_core.keys import current_key
from lepton_core.registry import POINTER_KEY, champion_history, promote
from lepton_core.spec import DIGITS_SPEC
from lepton_core.store import ArtifactStore

from .conftest import digits_model_info


def test_champion_model_alone_refuses_an_unblessed_candidate_and_keeps_the_champion(
    artifacts: ArtifactStore, instance: dg.DagsterInstance
):
    promote(artifacts, {"model_prefix": "models/old/fp32"}, "run-old")
    pointer = artifacts.read_bytes(POINTER_KEY)
    rules = ["test accuracy 0.6000 is below the floor 0.9000", "class 3: F1 0.1000 is low"]
    artifacts.write_json("reports/new/evaluation.json", {
        "blessed": False, "candidate_model": "models/new/fp32", "broken_rules": rules,
        "task": "classification", "dataset_version": "v1",
    })  # fmt: skip
    artifacts.write_json(current_key("evaluation_report"), {"prefix": "reports/new"})
    result = dg.materialize(
        [champion_model], resources=resources, instance=instance, raise_on_error=False
    )
    assert not result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert event.step_failure_data is not None
    assert (
        "models/new/fp32 is not blessed (blessed check): test accuracy 0.6000 is below the "
        "floor 0.9000; class 3: F1 0.1000 is low"
    ) in str(event.step_failure_data.error)
    assert artifacts.read_bytes(POINTER_KEY) == pointer
    assert [r["model_prefix"] for r in champion_history(artifacts)] == ["models/old/fp32"]


def test_a_champion_for_the_same_task_labels_and_columns_is_comparable():
    info = digits_model_info()
    check_comparable(info, digits_model_info("mlp"), digits_frame(), "models/champion/fp32")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"classes": list("012345678")}, f"task classification, classes {list('012345678')}, "),
        ({"task": "regression", "classes": None}, "task regression, classes None, "),
    ],
)  # fmt: skip
def test_a_champion_for_another_task_or_other_labels_is_refused(change: dict, named: str):
    champion = digits_model_info()
    champion["dataset_info"] = {**champion["dataset_info"], **change}
    with pytest.raises(ValueError, match="trained for other data") as error:
        check_comparable(digits_model_info(), champion, digits_frame(), "models/champion/fp32")
    message = str(error.value)
    assert message.startswith(f"champion models/champion/fp32 was trained for other data ({named}")
    assert "Roll back or clear the champion before switching datasets." in message


def test_a_champion_reading_a_column_the_test_rows_lack_is_refused():
    champion = digits_model_info()
    spec = DIGITS_SPEC.model_copy(update={"categorical_columns": ["colour"]})
    champion["spec"] = spec.model_dump()
    champion["preprocessing"]["categorical"] = {"colour": ["red", "blue"]}
    champion["dataset_info"] = dataset_description(spec, champion["preprocessing"]).model_dump()
    with pytest.raises(ValueError, match=r"columns the test rows lack: \['colour'\]"):
        check_comparable(digits_model_info(), champion, digits_frame(), "models/champion/fp32")

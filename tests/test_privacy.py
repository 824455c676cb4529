"""Personal data (``pii: drop | hash``) never reaches the artifact store, the quarantine,
Data Docs or the logs in clear."""

from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from lepton_assets.definitions import resources
from lepton_assets.ingestion import raw_batches
from lepton_assets.validation import validated_batches
from lepton_core.spec import DatasetSpec
from resources.project import ProjectResource

DAY = "2026-01-01"
KEY = "k" * 32
PROJECT = """
dataset:
  name: people
  id_column: email
  label_column: y
  classes: [0, 1]
  feature_columns: [x]
  categorical_columns: [city]
  pii: {email: hash, city: hash, ssn: drop}
  quarantine_threshold: 0.5
"""
ROWS = {
    "email": ["alice@example.com", "bob@example.com", "carol@example.com", "dave@example.com"],
    "y": ["0", "1", "0", "1"],
    "x": ["1.0", "2.0", "not a number", "4.0"],  # carol's row is quarantined
    "city": ["Reykjavik", "Nuuk", "Tromso", "Nuuk"],
    "ssn": ["123-45-6789", "987-65-4321", "555-12-3456", "111-22-3333"],
}
CLEAR = [v for column in ("email", "city", "ssn") for v in ROWS[column]]


def materialize(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, patch: pytest.MonkeyPatch
):
    landing = lepton_home / "landing" / DAY
    landing.mkdir(parents=True)
    pl.DataFrame(ROWS).write_csv(landing / "people.csv")
    project = tmp_path / "lepton.yaml"
    project.write_text(PROJECT)
    patch.setenv("LEPTON_PROJECT", str(project))
    return dg.materialize(
        [raw_batches, validated_batches],
        resources={**resources, "project": ProjectResource()},
        instance=instance,
        partition_key=DAY,
        raise_on_error=False,
    )


def test_personal_data_is_hashed_or_dropped_before_anything_is_written(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("LEPTON_PII_KEY", KEY)
    result = materialize(tmp_path, lepton_home, instance, monkeypatch)
    assert result.success
    written = [p for p in (lepton_home / "artifacts").rglob("*") if p.is_file()]
    assert {p.suffix for p in written} >= {".parquet", ".json", ".html"}
    for path in written:
        data = path.read_bytes()
        leaked = [v for v in CLEAR if v.encode() in data]
        assert not leaked, f"{path} holds {leaked}"
    logs = " ".join(e.message or "" for e in instance.all_logs(result.run_id))
    logs += " ".join(str(e.dagster_event) for e in instance.all_logs(result.run_id))
    assert not [v for v in CLEAR if v in logs]
    validated = pl.read_parquet(lepton_home / "artifacts" / "validated" / f"{DAY}.parquet")
    assert "ssn" not in validated.columns and validated.height == 3
    # HMAC-SHA256 with the key: stable across days and reruns, so ids still join.
    assert validated["email"][0] == (
        "0d8b3da1ccc85d32dd2c1a1863a4bd48217a82e7eeab7033dd57fe32f560c133"
    )
    assert validated["city"][1] == validated["city"][2]  # both Nuuk


def test_hashing_without_a_key_fails_naming_the_variable(
    tmp_path: Path, lepton_home: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("LEPTON_PII_KEY", raising=False)
    result = materialize(tmp_path, lepton_home, instance, monkeypatch)
    failure = result.failure_data_for_node("raw_batches")
    assert failure is not None and failure.error is not None
    assert "set LEPTON_PII_KEY to a secret of at least 16 bytes" in str(failure.error.to_string())
    assert not (lepton_home / "artifacts" / "raw").exists()


@pytest.mark.parametrize(
    ("pii", "message"),
    [
        ({"x": "hash"}, "pii: hash applies to the id or categorical columns, not ['x']"),
        ({"city": "drop"}, "pii: drop applies to columns the spec does not use, not ['city']"),
    ],
)
def test_pii_rules_that_cannot_hold_are_refused(pii: dict[str, str], message: str):
    base = {"name": "p", "id_column": "id", "label_column": "y", "classes": [0, 1]}
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DatasetSpec.model_validate(
            {**base, "feature_columns": ["x"], "categorical_columns": ["city"], "pii": pii}
        )

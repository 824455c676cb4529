"""The ML core is Dagster-free: what a Horovod rank imports loads neither Dagster nor GX; and
what every Dagster process loads leaves the slow imports to the steps that need them."""

import json
import subprocess
import sys

CORE_MODULES = [
    "lepton_core.train_worker",
    "lepton_core.compress",
    "lepton_core.evaluate",
    "lepton_core.predict",
    "lepton_core.rows",
    "lepton_core.registry",
    "lepton_core.images",
]
PROBE = """
import importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def imported(*modules: str) -> set[str]:
    """The top-level packages a fresh interpreter (as horovodrun starts each rank) loads."""
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *modules],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return set(json.loads(out))


def test_a_training_rank_and_the_core_import_no_dagster_and_no_gx():
    top_level = imported(*CORE_MODULES)
    assert {"torch", "horovod", "polars"} <= top_level
    assert not top_level & {"dagster", "great_expectations"}, sorted(top_level)


def test_validation_in_the_core_runs_gx_without_dagster():
    top_level = imported("lepton_core.validation.suite", "lepton_core.validation.batch_checks")
    assert "great_expectations" in top_level and "dagster" not in top_level


def test_loading_the_definitions_leaves_the_slow_imports_to_the_steps_that_run_them():
    """Every code server, run worker and step process loads the definitions: torch (1.5 s)
    waits for the steps that train, compress, evaluate or score, optuna for tuning, GX,
    scikit-learn and cleanlab (seconds) for validation, evaluation and annotation, and
    matplotlib (0.8 s) for the first plot. A code server or an ingestion step starts in
    about 2.4 s instead of 4.2 s here."""
    top_level = imported("lepton_assets.definitions", "lepton_assets.cli")
    assert "dagster" in top_level
    slow = {"torch", "optuna", "great_expectations", "sklearn", "cleanlab", "matplotlib"}
    assert not top_level & slow, sorted(top_level & slow)

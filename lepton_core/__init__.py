"""Lepton's ML core: specs, data, models, training worker, compression, evaluation and the
registry pointer. It imports neither Dagster nor Great Expectations (lepton_core/ruff.toml
bans them; tests/test_core_split.py checks a training rank)."""

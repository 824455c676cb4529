"""Validation: the day's raw batch through the Great Expectations suite; bad rows quarantined.

Outputs per day: ``validated/<day>.parquet`` (clean rows), ``quarantine/<day>.parquet``
(rejected rows with their file, line and broken rules), ``validation/<day>.json`` (the GX
validation result) and ``validated/<day>.json`` (the batch's manifest, read by
``training_dataset``), plus the suite (``validation/<day>.suite.json``) and GX's Data Docs
page (``validation/<day>.html``).

Rows of an annotation batch (``annotations-*`` files, with provenance columns) that correct
rows of other days must name an id an accepted day holds (else the row is quarantined,
``annotated_id_unknown``), and are not claimed as the day's own ids; a reviewed served row
is a new row, checked like any other.
"""

from collections import Counter
from typing import Any

import dagster as dg
import polars as pl

from lepton_assets.ingestion import raw_batches
from lepton_assets.partitions import daily_partitions_def
from lepton_core.drift import drift, drift_verdict, unseen_categories
from lepton_core.id_index import IdIndex
from lepton_core.keys import quarantine_key, raw_key, validated_key, validated_manifest_key
from lepton_core.rows import FAILED_RULES, SOURCE_FILE, SOURCE_ROW, annotated
from lepton_core.spec import DatasetSpec
from lepton_core.store import ArtifactStore
from lepton_core.validation.batch_checks import (
    corrections,
    drift_reference,
    ids_in_other_days,
    unknown_annotated_ids,
)
from resources.artifact_store import ArtifactStoreResource
from resources.expectations import ExpectationsResource
from resources.project import ProjectResource

SUITE_CHECK = "expectation_suite"
UNIQUE_CHECK = "unique_ids_across_days"
DRIFT_CHECK = "drift"


@dg.asset(
    partitions_def=daily_partitions_def,
    deps=[raw_batches],
    group_name="validation",
    kinds={"great_expectations", "polars", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            SUITE_CHECK,
            asset="validated_batches",
            blocking=True,
            description="The day's batch meets the schema and at most the spec's quarantine "
            "threshold of its rows break a row rule; downstream assets wait on it.",
        ),
        dg.AssetCheckSpec(
            UNIQUE_CHECK,
            asset="validated_batches",
            blocking=True,
            description="No sample id of the day is already in another validated day.",
        ),
        dg.AssetCheckSpec(
            DRIFT_CHECK,
            asset="validated_batches",
            blocking=True,
            description="Label and feature distributions stay within the spec's PSI thresholds "
            "against the current training dataset's train split.",
        ),
    ],
)
def validated_batches(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
    expectations: ExpectationsResource,
) -> dg.MaterializeResult:
    """The day's samples that pass every row rule of the Great Expectations suite.

    Rows that break a rule (out-of-range pixel, unknown label, null, duplicate id) are moved to
    ``quarantine/<day>.parquet`` with the landing file, line and broken rules, so nothing is
    lost. The blocking check fails the partition when the schema is wrong or too many rows
    were quarantined.
    """
    # GX takes seconds to import: imported here, by the one step that runs it, not by the code
    # server and every other step's process.
    from lepton_core.validation.suite import build_suite, run_suite

    spec = project.get_spec()
    store = artifacts.get_store()
    day = context.partition_key
    raw = store.read_parquet(raw_key(day))
    suite = build_suite(spec)
    engine, parameters = expectations.engine, spec.suite_parameters
    result = run_suite(raw.select(spec.columns), suite, engine, parameters)
    index = artifacts.get_id_index()
    try:
        return validate_day(context, store, spec, index, raw, suite, result)
    finally:
        index.dispose()


def validate_day(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    spec: DatasetSpec,
    index: IdIndex,
    raw: pl.DataFrame,
    suite: Any,
    result: Any,
) -> dg.MaterializeResult:
    """Split the day by the suite's ``result`` (and the annotation rule), write both parts,
    claim the day's ids, and report."""
    from lepton_core.validation.suite import (
        data_docs_html,
        row_failures,
        split_by_failures,
        table_failures,
    )

    day = context.partition_key
    failures = row_failures(result)
    # An annotation row must correct an accepted row: one naming an unknown id is quarantined
    # with its task (its provenance columns stay with it).
    for row in unknown_annotated_ids(index, store, spec, day, raw):
        failures.setdefault(row, []).append(f"annotated_id_unknown({spec.id_column})")
    clean, rejected = split_by_failures(raw, failures)
    batch_failures = table_failures(result)

    digest = store.write_parquet(validated_key(day), clean)
    # Written even when empty, so a rerun after a fix replaces the earlier quarantine.
    store.write_parquet(quarantine_key(day), rejected)
    # The GX result, the suite it ran and GX's Data Docs page, side by side.
    store.write_json(f"validation/{day}.json", result.to_json_dict())
    store.write_json(f"validation/{day}.suite.json", suite.to_json_dict())
    store.write_text(f"validation/{day}.html", data_docs_html(result))

    fraction = rejected.height / raw.height if raw.height else 0.0
    passed = not batch_failures and fraction <= spec.quarantine_threshold
    reference = drift_reference(store, spec)
    measured = drift(spec, reference[0], clean) if reference is not None and clean.height else None
    drifted = drift_verdict(spec, measured) if measured else []
    accept = passed and not drifted
    own_ids = clean.filter(~corrections(clean))[spec.id_column]
    repeated = ids_in_other_days(index, store, spec, day, own_ids, accept)
    unseen = unseen_categories(clean, reference[1]) if reference is not None else {}
    if any(unseen.values()):
        context.log.info(f"{day}: values outside the training vocabulary (unknown): {unseen}")
    broken = dict(Counter(rule for rules in rejected[FAILED_RULES] for rule in rules).most_common())
    store.write_json(
        validated_manifest_key(day),
        {
            "partition": day,
            "rows": clean.height,
            "quarantined": rejected.height,
            "sha256": digest,
            "check_passed": passed and not repeated and not drifted,
            "annotated_rows": int(annotated(clean).sum()),
            "suite": suite.name,
        },
    )
    if rejected.height:
        first = rejected.row(0, named=True)
        context.log.warning(
            f"{day}: quarantined {rejected.height} of {raw.height} rows; first: "
            f"{first[SOURCE_FILE]} line {first[SOURCE_ROW]} broke {first[FAILED_RULES]}"
        )
    files = dict(Counter(rejected[SOURCE_FILE].to_list()).most_common())
    check_metadata = {
        "quarantined_fraction": round(fraction, 4),
        "files_with_quarantined_rows": dg.MetadataValue.json(files),
        "threshold": spec.quarantine_threshold,
        "evaluated_expectations": len(result.results),
        "failed_batch_rules": dg.MetadataValue.json(batch_failures),
        "rows_per_broken_rule": dg.MetadataValue.json(broken),
    }
    return dg.MaterializeResult(
        metadata={
            "rows": clean.height,
            "quarantined_rows": rejected.height,
            "path": dg.MetadataValue.path(store.url(validated_key(day))),
            "quarantine": dg.MetadataValue.path(store.url(quarantine_key(day))),
            "unseen_categories": dg.MetadataValue.json(unseen),
            "validation_result": dg.MetadataValue.path(store.url(f"validation/{day}.json")),
            "data_docs": dg.MetadataValue.url(store.url(f"validation/{day}.html")),
            "sha256": digest,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=SUITE_CHECK,
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata=check_metadata,
                description=None
                if passed
                else (
                    f"batch rules failed: {batch_failures}"
                    if batch_failures
                    else f"{fraction:.1%} of rows quarantined > threshold "
                    f"{spec.quarantine_threshold:.1%}; rows per rule "
                    f"{dict(list(broken.items())[:3])}; files {list(files)[:3]}"
                ),
            ),
            dg.AssetCheckResult(
                check_name=UNIQUE_CHECK,
                passed=not repeated,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "repeated_ids": len(repeated),
                    "examples": dg.MetadataValue.json(repeated[:10]),
                },
                description=None
                if not repeated
                else (f"{len(repeated)} ids already in other days, e.g. {repeated[:3]}"),
            ),
            dg.AssetCheckResult(
                check_name=DRIFT_CHECK,
                passed=not drifted,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "reference": "none yet" if measured is None else "training train split",
                    "label_psi": measured["label_psi"] if measured else None,
                    "max_feature_psi": max(measured["feature_psi"].values()) if measured else None,
                },
                description="; ".join(drifted) if drifted else None,
            ),
        ],
    )

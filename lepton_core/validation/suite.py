"""Great Expectations 1.x: the suite built from a dataset spec, and the runner that applies it.

GX is called directly (``dagster-ge`` still requires GX < 1.0). Results are GX's own
``ExpectationSuiteValidationResult`` objects, stored as JSON next to each batch. ``run_suite``
evaluates the expectations the Polars engine's contract covers (``polars_engine``) as Polars
expressions and hands every other one, whole, to GX's pandas engine (``engine="pandas"``: the
whole suite on GX's own engine, the reference the Polars path is tested against).
"""

import html
from collections import defaultdict
from copy import copy
from typing import Any, cast

import great_expectations as gx
import polars as pl
from great_expectations.core import ExpectationSuiteValidationResult, ExpectationValidationResult
from great_expectations.core.expectation_validation_result import (
    ExpectationSuiteValidationResultSchema,
)
from great_expectations.data_context.types.base import (
    DataContextConfig,
    InMemoryStoreBackendDefaults,
    ProgressBarsConfig,
)
from great_expectations.expectations.registry import get_expectation_impl
from great_expectations.render.renderer import ValidationResultsPageRenderer
from great_expectations.render.view import DefaultJinjaPageView

from lepton_core.rows import FAILED_RULES, PARSE_ERRORS, SOURCE_FILE, SOURCE_ROW
from lepton_core.spec import DatasetSpec
from lepton_core.validation import Engine, polars_engine


def build_suite(spec: DatasetSpec) -> gx.ExpectationSuite:
    """The spec's expectations: schema; ids not null and unique; the target present (and in
    the class set for classification); features not null unless nullable, numeric ones
    within their ranges; image paths present (decoding is checked at ingestion); then the
    spec's extra expectations."""
    ex = gx.expectations
    expectations: list[Any] = [
        ex.ExpectTableColumnsToMatchSet(column_set=spec.columns, exact_match=True),
        ex.ExpectColumnValuesToNotBeNull(column=spec.id_column),
        ex.ExpectColumnValuesToBeUnique(column=spec.id_column),
        ex.ExpectColumnValuesToNotBeNull(column=spec.label_column),
    ]
    if spec.classes is not None:
        expectations.append(
            ex.ExpectColumnValuesToBeInSet(column=spec.label_column, value_set=list(spec.classes))
        )
    required = [c for c in spec.columns[2:] if c not in spec.nullable_columns]
    expectations += [ex.ExpectColumnValuesToNotBeNull(column=c) for c in required]
    for column in spec.feature_columns:
        low, high = spec.feature_range(column)
        if low is not None or high is not None:
            expectations.append(
                ex.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high)
            )
    for extra in spec.extra_expectations:
        expectations.append(get_expectation_impl(extra.type)(**extra.kwargs))
    return gx.ExpectationSuite(name=f"{spec.name}_suite", expectations=expectations)


def escaped(value: Any) -> Any:
    """Every string in a JSON-like value, HTML-escaped (keys are GX's own names)."""
    if isinstance(value, str):
        return html.escape(value)
    if isinstance(value, list):
        return [escaped(v) for v in value]
    if isinstance(value, dict):
        return {k: escaped(v) for k, v in value.items()}
    return value


def data_docs_html(result: ExpectationSuiteValidationResult) -> str:
    """GX's Data Docs page for one validation result, rendered by GX's own renderer.

    GX's templates put observed values (unexpected ids, strings from the data, value sets
    from the spec) into the page as they are, so a landed ``<script>`` would run in the
    reader's browser. The page is rendered from a copy of the result whose every string is
    escaped; the stored JSON result keeps the values as they were."""
    loaded = ExpectationSuiteValidationResultSchema().load(escaped(result.to_json_dict()))
    safe = cast(ExpectationSuiteValidationResult, loaded)
    document = ValidationResultsPageRenderer().render(safe)
    return DefaultJinjaPageView().render(document)


def rule_name(result: Any) -> str:
    """A readable rule name, e.g. ``expect_column_values_to_be_between(pixel_03)``."""
    config = result.expectation_config
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def row_failures(result: ExpectationSuiteValidationResult) -> dict[int, list[str]]:
    """Row position -> names of the row-level rules that row broke.

    Row-level rules are the column-map expectations (GX reports an ``unexpected_index_list``
    for them); the table-level ones (schema) have none and are judged on the batch.
    """
    failures: dict[int, list[str]] = defaultdict(list)
    for r in result.results:
        indices = (r.result or {}).get("unexpected_index_list")
        if r.success or indices is None:
            continue
        for index in indices:
            failures[int(index)].append(rule_name(r))
    return dict(failures)


def table_failures(result: ExpectationSuiteValidationResult) -> list[str]:
    """Names of the failed expectations that are not row-level (they fail the whole batch)."""
    return [
        rule_name(r)
        for r in result.results
        if not r.success and (r.result or {}).get("unexpected_index_list") is None
    ]


def run_suite(
    frame: pl.DataFrame,
    suite: gx.ExpectationSuite,
    engine: Engine = "polars",
    parameters: dict[str, Any] | None = None,
) -> ExpectationSuiteValidationResult:
    """GX's result for every expectation of ``suite``, in the suite's order; ``parameters``
    are GX suite parameters (``{"$PARAMETER": name}`` in an expectation)."""
    expectations = list(suite.expectations)
    none: list[ExpectationValidationResult | None] = [None] * len(expectations)
    fast = polars_engine.evaluate(frame, expectations) if engine == "polars" else none
    results = {id(e): r for e, r in zip(expectations, fast, strict=True) if r is not None}
    rest = [e for e in expectations if id(e) not in results]
    if rest:
        # GX refuses expectations that already belong to a suite: hand it copies.
        subsuite = gx.ExpectationSuite(name=suite.name, expectations=[copy(e) for e in rest])
        checked = run_with_gx(frame, subsuite, parameters).results
        results.update(zip(map(id, rest), checked, strict=True))
    ordered = [results[id(e)] for e in expectations]
    passed = sum(bool(r.success) for r in ordered)
    return ExpectationSuiteValidationResult(
        success=passed == len(ordered),
        results=ordered,
        suite_name=suite.name,
        statistics={
            "evaluated_expectations": len(ordered),
            "successful_expectations": passed,
            "unsuccessful_expectations": len(ordered) - passed,
            "success_percent": 100.0 * passed / len(ordered) if ordered else None,
        },
    )


def run_with_gx(
    frame: pl.DataFrame, suite: gx.ExpectationSuite, parameters: dict[str, Any] | None = None
) -> ExpectationSuiteValidationResult:
    """The suite on GX's pandas engine, in an ephemeral context (no files, no analytics); the
    results in the suite's order.

    GX orders its results its own way, and a result's configuration is not the one sent
    when a suite parameter was resolved into it (``{"$PARAMETER": "now()"}``), so results
    are put back in order by the id GX gives each expectation when the suite is added."""
    context = gx.get_context(
        mode="ephemeral",
        project_config=DataContextConfig(
            store_backend_defaults=InMemoryStoreBackendDefaults(),
            analytics_enabled=False,
            progress_bars=ProgressBarsConfig(globally=False),
        ),
    )
    suite = context.suites.add(suite)
    batch_definition = (
        context.data_sources.add_pandas("lepton")
        .add_dataframe_asset("batch")
        .add_batch_definition_whole_dataframe("whole")
    )
    # The frame as pandas reads the same data from Parquet (pyarrow's conversion: dates stay
    # dates, integers with nulls become float64), which is what GX sees for a user's files;
    # Polars' own to_pandas would turn dates into datetimes. Positional index 0..n-1, so
    # unexpected_index_list holds row positions.
    dataframe = frame.to_arrow().to_pandas()
    batch = batch_definition.get_batch(batch_parameters={"dataframe": dataframe})
    result = batch.validate(
        suite, result_format={"result_format": "COMPLETE"}, expectation_parameters=parameters
    )
    by_id = {getattr(r.expectation_config, "id", None): r for r in result.results}
    result.results = [by_id[e.id] for e in suite.expectations]
    return result


def split_by_failures(
    raw: pl.DataFrame, failures: dict[int, list[str]]
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(clean rows without lineage columns, rejected rows with lineage and broken rules).

    A row's rules are its parse errors from ingestion, then the expectations it broke.
    """
    rules = pl.Series(
        "_gx_rules", [failures.get(i, []) for i in range(raw.height)], dtype=pl.List(pl.String)
    )
    tagged = raw.with_columns(
        pl.concat_list([pl.col(PARSE_ERRORS), pl.lit(rules)]).alias(FAILED_RULES)
    ).drop(PARSE_ERRORS)
    rejected = tagged.filter(pl.col(FAILED_RULES).list.len() > 0)
    clean = tagged.filter(pl.col(FAILED_RULES).list.len() == 0).drop(
        SOURCE_FILE, SOURCE_ROW, FAILED_RULES
    )
    return clean, rejected

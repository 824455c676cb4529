"""The evaluation_report asset and its blocking ``blessed`` check.

The work is in ``lepton_core.evaluate``: the candidate and the champion scored on the same
held-out test split, the report written, the promotion rules applied.
"""

import dagster as dg

from lepton_assets.compression import compressed_model
from lepton_assets.configs import EvaluationConfig, effective
from lepton_assets.pointers import publish, upstream
from resources.artifact_store import ArtifactStoreResource
from resources.project import ProjectResource

BLESSED_CHECK = "blessed"


@dg.asset(
    deps=[compressed_model],
    group_name="evaluation",
    kinds={"torch", "html"},
    check_specs=[
        dg.AssetCheckSpec(
            BLESSED_CHECK,
            asset="evaluation_report",
            blocking=True,
            description="The candidate meets the floors (accuracy, or R² and RMSE) and does "
            "not regress against the champion; champion_model waits on it.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,  # pyright: ignore[reportInvalidTypeForm]
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
) -> dg.MaterializeResult:
    """Which model wins, by how much, at what size and speed, and whether it is promoted.

    The compressed candidate and the current champion scored on the same held-out test split
    (classification: accuracy, macro-F1, per-class P/R/F1, confusion matrix, calibration;
    regression: RMSE, MAE, R²), with size and CPU latency, training curves, the compression
    variants and their Pareto plot, in one self-contained HTML report linked below.
    """
    from lepton_core.evaluate import evaluate_candidate, headline  # torch: the step's own

    settings = effective(project.get_project().evaluation, config, "evaluation_report")
    store = artifacts.get_store()
    candidate, consumed = upstream(store, context, "compressed_model")
    ev, report_prefix = evaluate_candidate(store, candidate, settings)
    publish(store, context, "evaluation_report", {"prefix": report_prefix})
    broken = ev["broken_rules"]
    metrics = headline(ev)
    context.log.info(f"test {metrics}; blessed={not broken} {broken}")
    champion = ev["champion"]
    return dg.MaterializeResult(
        metadata={
            **{f"test_{k}": v for k, v in metrics.items()},
            "task": ev["task"],
            "candidate_from": f"{candidate['prefix']} ({consumed})",
            "champion_metrics": dg.MetadataValue.json(
                {k: champion[k] for k in metrics} if champion else {}
            ),
            "blessed": not broken,
            "report": dg.MetadataValue.path(store.url(f"{report_prefix}/report.html")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=BLESSED_CHECK,
                passed=not broken,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(broken) if broken else "meets every promotion rule",
                metadata={
                    **{f"test_{k}": v for k, v in metrics.items()},
                    "broken_rules": dg.MetadataValue.json(broken),
                },
            )
        ],
    )

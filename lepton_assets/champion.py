"""The champion asset: promotes a blessed candidate (pointer logic in ``champion_pointer``)."""

import dagster as dg

from lepton_assets.champion_pointer import POINTER_KEY, champion_history, promote
from lepton_assets.evaluation import BLESSED_CHECK, evaluation_report
from lepton_assets.training import current_key
from resources.artifact_store import ArtifactStoreResource


@dg.asset(
    deps=[evaluation_report],
    group_name="evaluation",
    kinds={"torch"},
)
def champion_model(
    context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource
) -> dg.MaterializeResult:
    """The model in production: the last blessed candidate, with the history of promotions.

    Runs only after the blocking ``blessed`` check on ``evaluation_report`` passed; it
    re-reads the verdict too, so materializing it alone can never promote an unblessed model.
    """
    store = artifacts.get_store()
    report_prefix = store.read_json(current_key("evaluation_report"))["prefix"]
    ev = store.read_json(f"{report_prefix}/evaluation.json")
    if not ev["blessed"]:
        raise ValueError(
            f"{ev['candidate_model']} is not blessed ({BLESSED_CHECK} check): "
            + "; ".join(ev["broken_rules"])
        )
    record = promote(
        store,
        {
            "model_prefix": ev["candidate_model"],
            "test_accuracy": ev["candidate"]["accuracy"],
            "report": f"{report_prefix}/report.html",
        },
        context.run.run_id,
    )
    context.log.info(f"promoted {record['model_prefix']} (previous: {record['previous']})")
    return dg.MaterializeResult(
        metadata={
            "model": record["model_prefix"],
            "previous": record["previous"] or "",
            "test_accuracy": record["test_accuracy"],
            "promotions": len(champion_history(store)),
            "pointer": dg.MetadataValue.path(store.url(POINTER_KEY)),
        }
    )

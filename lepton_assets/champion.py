"""The champion asset: promotes a blessed candidate (pointer logic in ``lepton_core.registry``)."""

import dagster as dg

from lepton_assets.evaluation import BLESSED_CHECK, evaluation_report
from lepton_assets.pointers import upstream
from lepton_core.registry import (
    POINTER_KEY,
    champion_history,
    champion_lineage,
    promote,
    rollback,
)
from resources.artifact_store import ArtifactStoreResource

# Who starts a run, as far as the instance knows: the `lepton` command tags its runs with
# the user; Dagster tags a sensor's, a schedule's and a backfill's runs (Dagster+ the user's).
INITIATOR_TAGS = {
    "lepton/user": "user",
    "dagster/user": "user",
    "dagster/sensor_name": "sensor",
    "dagster/schedule_name": "schedule",
    "dagster/backfill": "backfill",
}


def initiator(run: dg.DagsterRun) -> str | None:
    """Who started ``run`` ("user alice", "sensor retraining_sensor"), None when unknown."""
    for tag, what in INITIATOR_TAGS.items():
        if tag in run.tags:
            return f"{what} {run.tags[tag]}"
    return None


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
    from lepton_core.evaluate import headline  # torch: imported by the step, not the server
    from lepton_core.model_card import write_card

    store = artifacts.get_store()
    report_prefix = upstream(store, context, "evaluation_report")[0]["prefix"]
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
            "task": ev["task"],
            "metrics": headline(ev),
            "dataset_version": ev["dataset_version"],
            "report": f"{report_prefix}/report.html",
            "by": initiator(context.run),
        },
        context.run.run_id,
    )
    card = write_card(store, record["model_prefix"])
    context.log.info(f"promoted {record['model_prefix']} (previous: {record['previous']})")
    return dg.MaterializeResult(
        metadata={
            "model": record["model_prefix"],
            "previous": record["previous"] or "",
            **{f"test_{k}": v for k, v in record["metrics"].items()},
            "champions_in_force": len(champion_lineage(champion_history(store))),
            "pointer": dg.MetadataValue.path(store.url(POINTER_KEY)),
            "model_card": dg.MetadataValue.path(store.url(card)),
        }
    )


@dg.op(description="Point the champion back at the previous one (the promotion before it).")
def rollback_champion(
    context: dg.OpExecutionContext, artifacts: ArtifactStoreResource
) -> dg.Output[None]:
    from lepton_core.model_card import write_card  # torch: imported by the step

    store = artifacts.get_store()
    record = rollback(store, context.run.run_id, initiator(context.run))
    card = write_card(store, record["model_prefix"])
    write_card(store, record["previous"])
    context.log.info(f"champion rolled back to {record['model_prefix']} from {record['previous']}")
    context.log_event(
        dg.AssetMaterialization(
            asset_key="champion_model",
            description="rollback",
            metadata={
                "model": record["model_prefix"],
                "previous": record["previous"],
                "action": "rollback",
                "pointer": dg.MetadataValue.path(store.url(POINTER_KEY)),
                "model_card": dg.MetadataValue.path(store.url(card)),
            },
        )
    )
    return dg.Output(None)

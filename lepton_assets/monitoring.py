"""Monitoring of what the server answered: the loop from serving back into training.

``served_traffic`` (daily) measures a day of sampled served traffic against the champion's
training data (``lepton_core.serving.monitor``); its check ``served_traffic_stable`` fails,
with a warning, when the drift crosses the spec's thresholds, and the retraining sensor then
retrains as soon as one new validated day is there instead of waiting for ``min_new_days``.
Its metadata also says which version each server replica serves (``serving/replicas/``).
"""

import dagster as dg

from lepton_assets.partitions import daily_partitions_def
from lepton_core.serving.monitor import served_drift
from resources.artifact_store import ArtifactStoreResource

STABLE_CHECK = "served_traffic_stable"


def replica_versions(store) -> dict[str, str]:
    return {
        record["replica"]: record["version"]
        for record in (store.read_json(k) for k in store.list("serving/replicas"))
    }


@dg.asset(
    partitions_def=daily_partitions_def,
    group_name="monitoring",
    kinds={"polars", "parquet"},
    check_specs=[
        dg.AssetCheckSpec(
            STABLE_CHECK,
            asset="served_traffic",
            description="Served features and predictions stay within the spec's PSI "
            "thresholds against the champion's training data; a failure speeds retraining.",
        )
    ],
)
def served_traffic(context: dg.AssetExecutionContext, artifacts: ArtifactStoreResource):
    """A day of served traffic (sampled by ``lepton serve --sample-rate``) against the
    champion's training data: feature and prediction PSI, unseen categories, versions."""
    store = artifacts.get_store()
    result = served_drift(store, context.partition_key)
    drifted = result.get("drifted", [])
    yield dg.MaterializeResult(
        metadata={
            "rows": result["rows"],
            "champion": result["champion"],
            "prediction_psi": result.get("prediction_psi", 0.0),
            "feature_psi": dg.MetadataValue.json(result.get("feature_psi", {})),
            "unseen_share": result.get("unseen_share", 0.0),
            "unseen_categories": dg.MetadataValue.json(result.get("unseen_categories", {})),
            "versions_answered": dg.MetadataValue.json(result.get("versions", {})),
            "replicas": dg.MetadataValue.json(replica_versions(store)),
        }
    )
    yield dg.AssetCheckResult(
        check_name=STABLE_CHECK,
        passed=not drifted,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"drifted": dg.MetadataValue.json(drifted), "rows": result["rows"]},
    )

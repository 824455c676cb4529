"""Jobs: the two halves of the lifecycle, as schedules, sensors and the CLI launch them.

The data half is partitioned by day and the model half is not, and a Dagster job runs assets
of one partitioning, so the lifecycle is two jobs.
"""

import dagster as dg

from lepton_assets.champion import rollback_champion

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingestion", "validation"),
    description="Ingest and validate one day of landing files.",
)

monitoring_job = dg.define_asset_job(
    "monitoring_job",
    selection=dg.AssetSelection.groups("monitoring"),
    description="Measure a day of served traffic against the champion's training data.",
)

training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.groups("training", "compression", "evaluation"),
    description="Build the dataset, train with Horovod, compress, evaluate, promote.",
)


@dg.job(description="Roll the champion back to the one promoted before it.")
def rollback_job() -> None:
    rollback_champion()

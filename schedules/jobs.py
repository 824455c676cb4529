"""Jobs: the two halves of the lifecycle, as schedules, sensors and the CLI launch them.

The data half is partitioned by day and the model half is not, and a Dagster job runs assets
of one partitioning, so the lifecycle is two jobs. The hyperparameter study (``tuned_config``,
in the training group) is left out of the training job: it runs in ``tuning_job``, or first
in ``tune_and_train_job``, and the training step uses its latest result either way.
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

annotation_job = dg.define_asset_job(
    "annotation_job",
    selection=dg.AssetSelection.assets("annotation_candidates"),
    description="Find one day's rows worth a person's review (annotation candidates).",
)

labeling_job = dg.define_asset_job(
    "labeling_job",
    selection=dg.AssetSelection.groups("annotation"),
    description="Find one day's annotation candidates and send them to Label Studio as tasks.",
)

STUDY = dg.AssetSelection.assets("tuned_config")
MODEL_HALF = dg.AssetSelection.groups("training", "compression", "evaluation")

training_job = dg.define_asset_job(
    "training_job",
    selection=MODEL_HALF - STUDY,
    description="Build the dataset, train with Horovod, compress, evaluate, promote.",
)

tuning_job = dg.define_asset_job(
    "tuning_job",
    selection=dg.AssetSelection.assets("training_dataset") | STUDY,
    description="Build the dataset and run the project's hyperparameter study on it.",
)

tune_and_train_job = dg.define_asset_job(
    "tune_and_train_job",
    selection=MODEL_HALF,
    description="The training job with the study first: train with the best configuration.",
)


@dg.job(description="Roll the champion back to the one promoted before it.")
def rollback_job() -> None:
    rollback_champion()

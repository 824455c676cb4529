"""The one Definitions object of Lepton: assets per group, resources, jobs, schedules,
sensors.

Nothing here reads the environment: resources resolve their settings when a run uses them.
"""

import dagster as dg

from lepton_assets.annotation import annotation_candidates, annotation_tasks
from lepton_assets.champion import champion_model
from lepton_assets.compression import compressed_model
from lepton_assets.evaluation import evaluation_report
from lepton_assets.executors import lepton_executor
from lepton_assets.ingestion import raw_batches
from lepton_assets.monitoring import served_traffic
from lepton_assets.training import trained_model, training_dataset
from lepton_assets.tuning import tuned_config
from lepton_assets.validation import validated_batches
from resources.alerts import AlertWebhookResource
from resources.artifact_store import ArtifactStoreResource
from resources.expectations import ExpectationsResource
from resources.horovod_launcher import HorovodLauncherResource
from resources.label_studio import LabelStudioResource
from resources.landing_zone import LandingZoneResource
from resources.project import ProjectResource
from resources.retraining_policy import RetrainingPolicyResource
from schedules.jobs import (
    annotation_job,
    ingest_job,
    labeling_job,
    monitoring_job,
    rollback_job,
    training_job,
    tune_and_train_job,
    tuning_job,
)
from schedules.schedules import nightly_ingest_schedule, nightly_monitoring_schedule
from schedules.sensors import (
    annotation_sensor,
    failure_alert_sensor,
    landing_sensor,
    retraining_sensor,
)

ingestion_assets = [raw_batches]
validation_assets = [validated_batches]
training_assets = [training_dataset, trained_model]
tuning_assets = [tuned_config]
compression_assets = [compressed_model]
evaluation_assets = [evaluation_report, champion_model]
monitoring_assets = [served_traffic]
annotation_assets = [annotation_candidates, annotation_tasks]

resources = {
    "artifacts": ArtifactStoreResource(),
    "landing": LandingZoneResource(),
    "project": ProjectResource(),
    "expectations": ExpectationsResource(),
    "horovod": HorovodLauncherResource(),
    "retraining": RetrainingPolicyResource(),
    "alerts": AlertWebhookResource(),
    "label_studio": LabelStudioResource(),
}

defs = dg.Definitions(
    assets=[
        *ingestion_assets,
        *validation_assets,
        *training_assets,
        *tuning_assets,
        *compression_assets,
        *evaluation_assets,
        *monitoring_assets,
        *annotation_assets,
    ],
    jobs=[
        annotation_job,
        ingest_job,
        labeling_job,
        training_job,
        tuning_job,
        tune_and_train_job,
        rollback_job,
        monitoring_job,
    ],
    schedules=[nightly_ingest_schedule, nightly_monitoring_schedule],
    sensors=[landing_sensor, retraining_sensor, annotation_sensor, failure_alert_sensor],
    resources=resources,
    executor=lepton_executor(),
)

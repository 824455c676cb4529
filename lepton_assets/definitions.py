"""The one Definitions object of Lepton: assets per group, resources, jobs, sensors.

Nothing here reads the environment: resources resolve their settings when a run uses them.
"""

import dagster as dg

from lepton_assets.champion import champion_model
from lepton_assets.compression import compressed_model
from lepton_assets.evaluation import evaluation_report
from lepton_assets.ingestion import raw_batches
from lepton_assets.training import trained_model, training_dataset
from lepton_assets.validation import validated_batches
from resources.artifact_store import ArtifactStoreResource
from resources.dataset import DatasetResource
from resources.expectations import ExpectationsResource
from resources.horovod_launcher import HorovodLauncherResource
from resources.landing_zone import LandingZoneResource
from schedules.jobs import ingest_job, rollback_job, training_job
from schedules.sensors import landing_sensor

ingestion_assets = [raw_batches]
validation_assets = [validated_batches]
training_assets = [training_dataset, trained_model]
compression_assets = [compressed_model]
evaluation_assets = [evaluation_report, champion_model]

resources = {
    "artifacts": ArtifactStoreResource(),
    "landing": LandingZoneResource(),
    "dataset": DatasetResource(),
    "expectations": ExpectationsResource(),
    "horovod": HorovodLauncherResource(),
}

defs = dg.Definitions(
    assets=[
        *ingestion_assets,
        *validation_assets,
        *training_assets,
        *compression_assets,
        *evaluation_assets,
    ],
    jobs=[ingest_job, training_job, rollback_job],
    sensors=[landing_sensor],
    resources=resources,
)

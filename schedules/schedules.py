"""Schedules: the nightly ingestion of yesterday's landing files, and the nightly measure of
yesterday's served traffic."""

import dagster as dg

from schedules.jobs import ingest_job, monitoring_job

# Ingest and validate the day that just ended at 02:00, so late files of the day have two
# hours to land. The time is in the partitions' timezone (UTC; set ``timezone`` on
# ``daily_partitions_def`` to change it): Dagster ties a partitioned schedule to it.
NIGHTLY_HOUR, NIGHTLY_MINUTE = 2, 0

nightly_ingest_schedule = dg.build_schedule_from_partitioned_job(
    ingest_job,
    name="nightly_ingest_schedule",
    hour_of_day=NIGHTLY_HOUR,
    minute_of_hour=NIGHTLY_MINUTE,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Ingests and validates yesterday's partition every night; retraining follows "
    "through retraining_sensor once the new day has been validated.",
)

# Served traffic of the day that ended, after the servers' last samples of it (written at
# least once a minute) have landed.
nightly_monitoring_schedule = dg.build_schedule_from_partitioned_job(
    monitoring_job,
    name="nightly_monitoring_schedule",
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Measures yesterday's served traffic against the champion's training data; "
    "drift speeds up retraining (retraining_sensor).",
)

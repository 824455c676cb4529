"""Where a run's steps execute, chosen by ``LEPTON_EXECUTOR`` when the code location loads.

- unset or ``multiprocess``: Dagster's default, one process per step on the run's machine;
- ``celery``: each step is a Celery task (``dagster-celery``) on the broker
  ``LEPTON_CELERY_BROKER`` (default RabbitMQ on 127.0.0.1), executed by whichever worker
  takes it: ``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`` on
  any machine that shares the Dagster instance (PostgreSQL), the artifact store (S3) and the
  id index (``LEPTON_ID_INDEX_URL``). A backfill of many days then spreads over the workers.

The broker URL may hold a password, so the executor reads it from the environment at run
time (``{"env": ...}``) and never stores it in the job's configuration.
"""

import os

import dagster as dg
from dagster_celery import celery_executor

EXECUTOR_VARIABLE = "LEPTON_EXECUTOR"
BROKER_VARIABLE = "LEPTON_CELERY_BROKER"
DEFAULT_BROKER = "pyamqp://guest@127.0.0.1:5672//"


def lepton_executor() -> dg.ExecutorDefinition | None:
    """The executor for every Lepton job (None: Dagster's default)."""
    choice = os.environ.get(EXECUTOR_VARIABLE, "multiprocess")
    if choice == "multiprocess":
        return None
    if choice != "celery":
        raise ValueError(f"{EXECUTOR_VARIABLE}={choice!r}: expected 'multiprocess' or 'celery'")
    broker = {"env": BROKER_VARIABLE} if os.environ.get(BROKER_VARIABLE) else DEFAULT_BROKER
    # Results travel back over the broker's own connection (rpc://): no second service.
    return celery_executor.configured({"broker": broker, "backend": "rpc://"}, name="celery")

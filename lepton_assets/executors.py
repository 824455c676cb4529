"""Where a run's steps execute, chosen by ``LEPTON_EXECUTOR`` when the code location loads.

- unset or ``multiprocess``: Dagster's default, one process per step on the run's machine;
- ``celery``: each step is a Celery task (``dagster-celery``) on the broker
  ``LEPTON_CELERY_BROKER`` (default RabbitMQ on 127.0.0.1), executed by whichever worker
  takes it: ``dagster-celery worker start -A dagster_celery.app -y deploy/celery.yaml`` on
  any machine that shares the Dagster instance (PostgreSQL), the artifact store (S3) and the
  id index (``LEPTON_ID_INDEX_URL``). A backfill of many days then spreads over the workers.

The broker URL may hold a password, so the executor reads it from the environment at run
time (``{"env": ...}``) and never stores it in the job's configuration; errors name it with
the password masked.

A worker acknowledges a step's task only when the step has ended (``task_acks_late``), and
a task whose worker dies is handed back to the broker (``task_reject_on_worker_lost``): when
a worker machine is lost mid-step, another worker runs the step again. Every Lepton step
rewrites its own outputs (a day's id claims, its validated files), so the second run
replaces what the first left half-written. With RabbitMQ, a step must end within the
broker's ``consumer_timeout`` (30 minutes by default): raise it for long training steps. The
price of redelivery: a step that kills its worker every time (out of memory, say) is handed
out again and again, so watch the workers' logs for restarts.
"""

import os
from collections.abc import Generator

import dagster as dg
from dagster_celery import celery_executor
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

EXECUTOR_VARIABLE = "LEPTON_EXECUTOR"
BROKER_VARIABLE = "LEPTON_CELERY_BROKER"
DEFAULT_BROKER = "pyamqp://guest@127.0.0.1:5672//"
# The same block as deploy/celery.yaml's config_source, which the workers read.
REDELIVER_LOST_STEPS = {"task_acks_late": True, "task_reject_on_worker_lost": True}


class BrokerUnreachableError(Exception):
    """The Celery broker refused or dropped the run's connection."""


class LeptonCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, whose broker failures name the broker (password masked)."""

    def __init__(self, configured: CeleryExecutor) -> None:
        vars(self).update(vars(configured))  # the same settings; only ``execute`` differs

    def execute(self, plan_context, execution_plan) -> Generator[dg.DagsterEvent]:  # noqa: ANN001
        try:
            yield from super().execute(plan_context, execution_plan)
        except OperationalError as error:
            url = maybe_sanitize_url(self.broker)
            raise BrokerUnreachableError(f"Celery broker {url} unreachable: {error}") from error


@dg.executor(
    name="celery",
    config_schema=CELERY_CONFIG,
    requirements=dg.multiple_process_executor_requirements(),
)
def lepton_celery_executor(init_context: dg.InitExecutorContext) -> LeptonCeleryExecutor:
    create = celery_executor.executor_creation_fn
    assert create is not None  # dagster-celery's executor is built by a function
    configured = create(init_context)
    assert isinstance(configured, CeleryExecutor)
    return LeptonCeleryExecutor(configured)


def lepton_executor() -> dg.ExecutorDefinition | None:
    """The executor for every Lepton job (None: Dagster's default)."""
    choice = os.environ.get(EXECUTOR_VARIABLE, "multiprocess")
    if choice == "multiprocess":
        return None
    if choice != "celery":
        raise ValueError(f"{EXECUTOR_VARIABLE}={choice!r}: expected 'multiprocess' or 'celery'")
    broker = {"env": BROKER_VARIABLE} if os.environ.get(BROKER_VARIABLE) else DEFAULT_BROKER
    # Results travel back over the broker's own connection (rpc://): no second service.
    return lepton_celery_executor.configured(
        {"broker": broker, "backend": "rpc://", "config_source": REDELIVER_LOST_STEPS},
        name="celery",
    )

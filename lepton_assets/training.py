"""Training: validated partitions -> a versioned dataset -> a Horovod-trained model.

The work is in ``lepton_core`` (``data.build_dataset``, the worker ``train_worker``); these
assets resolve config and project, check the user's code, launch, and report metadata. The
core modules that load torch are imported by the steps that run them, so a process that only
loads the definitions (a code server, a run worker, an ingestion step) starts without torch.
"""

from typing import Any

import dagster as dg

from lepton_assets.configs import TrainingConfig, check_run_config, effective
from lepton_assets.pointers import publish, upstream
from lepton_assets.validation import validated_batches
from lepton_core.keys import current_key, dataset_prefix
from lepton_core.spec import Project, worker_job
from lepton_core.store import ArtifactStore
from lepton_core.usercode import UserCodeError, resolve
from resources.artifact_store import ArtifactStoreResource
from resources.horovod_launcher import HorovodLauncherResource
from resources.project import ProjectResource

WORKER_MODULE = "lepton_core.train_worker"


@dg.asset(
    deps=[validated_batches],
    group_name="training",
    kinds={"polars", "parquet"},
)
def training_dataset(
    context: dg.AssetExecutionContext,
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
) -> dg.MaterializeResult:
    """Every validated day whose checks passed, as one versioned train/val/test dataset.

    The split of a sample is a hash of its id (80/10/10), so it never changes as days are
    added; imputation values, standardization and categorical vocabularies come from the
    train split only. The version is a hash of the spec and the validated batches' content,
    so the same inputs give the same version. It first checks the run config of every later
    step against the project's settings: a bad knob fails the run here, naming the field.
    """
    from lepton_core.data import accepted_partitions, build_dataset

    check_run_config(context.run.run_config, project.get_project())
    spec = project.get_spec()
    store = artifacts.get_store()
    accepted, left_out = accepted_partitions(store)
    if not accepted:
        raise ValueError(
            f"no validated partition with a passing check under {store.url('validated')}/"
        )
    if left_out:
        context.log.warning(f"left out partitions whose validation check failed: {left_out}")
    version, info = build_dataset(store, spec, accepted)
    publish(store, context, "training_dataset", {"version": version})
    vocabularies = {c: len(v) for c, v in info["preprocessing"]["categorical"].items()}
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "task": spec.task,
            "partitions": len(info["partitions"]),
            "left_out_partitions": dg.MetadataValue.json(left_out),
            **{f"{s}_rows": n for s, n in info["rows"].items()},
            "vocabulary_sizes": dg.MetadataValue.json(vocabularies),
            "path": dg.MetadataValue.path(store.url(dataset_prefix(version))),
        }
    )


def tuned_project(
    store: ArtifactStore, user: Project, use_tuned: bool
) -> tuple[Project, dict[str, Any] | None]:
    """The project with the latest study's best configuration in place, and that
    configuration; the project as it is when none was tuned or ``use_tuned`` is off. A run
    config value still wins over a tuned one. A study's result is kept for later datasets:
    hyperparameters outlive a day's data."""
    from lepton_core.tuning import apply

    if not use_tuned or not store.exists(current_key("tuned_config")):
        return user, None
    tuned = store.read_json(current_key("tuned_config"))
    training, model = apply(tuned["params"], user.training, user.model_ref)
    return user.model_copy(update={"training": training, "model": model}), tuned


def run_job(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    horovod: HorovodLauncherResource,
    key: str,
    job: dict[str, Any],
    secrets: dict[str, str] | None = None,
) -> dg.MaterializeResult:
    """Write the worker's ``job`` at ``key`` and run it on every rank (training, a tuning
    trial or a distilled student alike); what rank 0 reported."""
    store.write_json(key, job)
    args = ["--artifacts-uri", store.uri, "--job-key", key]
    return horovod.run_worker(context, module=WORKER_MODULE, args=args, secrets=secrets)


def check_user_code(info: dict[str, Any]) -> None:
    """Build the model and run a dummy batch (and the loss) before any Horovod process
    starts; errors name the factory or loss and the shapes."""
    from lepton_core.models import build_model, check_outputs

    model = build_model(info)
    check_outputs(model, info)
    if info["loss"]:
        resolve(info["loss"], info["code_path"], what="loss")


@dg.asset(
    deps=[training_dataset, "tuned_config"],
    group_name="training",
    kinds={"torch", "horovod"},
    # One Horovod job at a time: its processes take every core (or GPU) they are given.
    pool="horovod_training",
    # A retry resumes from the last epoch checkpoint of the same run, not from scratch.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=5),
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,  # pyright: ignore[reportInvalidTypeForm]
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
    horovod: HorovodLauncherResource,
) -> dg.MaterializeResult:
    """The project's model (its factory, or the built-in network) trained by a real Horovod
    job on the current training dataset.

    The step checks the factory and loss on a dummy batch, then launches ``horovodrun`` with
    the worker module ``lepton_core.train_worker``; rank 0 streams per-epoch metrics to this
    step's log through Dagster Pipes, checkpoints every epoch, saves the state dict and
    reports loss and the validation metric per epoch and samples/s as metadata. A retry, or a
    re-execution of the run, resumes from the last checkpoint.
    """
    from lepton_core.data import read_dataset_info
    from lepton_core.models import model_description

    store = artifacts.get_store()
    pointer, consumed = upstream(store, context, "training_dataset")
    version = pointer["version"]
    user = project.get_project()
    use_tuned = effective(user.training, config, "trained_model").use_tuned
    user, tuned = tuned_project(store, user, use_tuned)
    if tuned:
        context.log.info(
            f"the tuned configuration of study {tuned['study']} (trial {tuned['trial']}, "
            f"{tuned['metric']} {tuned['value']}): {tuned['params']}"
        )
    settings = effective(user.training, config, "trained_model")
    info = {**model_description(user, read_dataset_info(store, version)), "tuned": tuned}
    try:
        check_user_code(info)
    except UserCodeError as exc:
        # The same code fails the same way again: a retry would only delay the message.
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    run = context.run
    # Retries share the run id and re-executions the root run id: both resume.
    lineage = run.root_run_id or run.run_id
    prefix = f"models/{version}-{run.run_id[:8]}"
    job = worker_job(settings, info, prefix, f"checkpoints/{version}/{lineage}")
    context.log.info(f"model factory {info['factory']} {info['kwargs']}; settings {settings}")
    result = run_job(context, store, horovod, f"runs/{run.run_id}/train_job.json", job)
    publish(store, context, "trained_model", {"prefix": prefix})
    # The worker reports its metadata; which dataset it was given is the step's to add.
    return result._replace(
        metadata={**(result.metadata or {}), "dataset_from": f"{version} ({consumed})"}
    )

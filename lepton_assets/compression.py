"""The compressed_model asset: every variant the model supports, one chosen by policy.

The work is in ``lepton_core.compress``; this asset resolves the settings and reports.
"""

from typing import TYPE_CHECKING

import dagster as dg
import polars as pl

from lepton_assets.configs import CompressionConfig, effective
from lepton_assets.pointers import publish, upstream
from lepton_assets.training import check_user_code, run_job, trained_model
from lepton_core.spec import CompressionSettings, Project
from lepton_core.store import ArtifactStore
from lepton_core.usercode import UserCodeError
from resources.artifact_store import ArtifactStoreResource
from resources.horovod_launcher import HorovodJobError, HorovodLauncherResource
from resources.project import ProjectResource

if TYPE_CHECKING:  # torch: imported by the step, not by every process loading the definitions
    from lepton_core.compress import Unsupported


def markdown_cell(value: object) -> str:
    """A value as one table cell: a pipe escaped, a line break made a space."""
    return "" if value is None else str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in frame.iter_rows()]
    return "\n".join([header, rule, *body])


def train_student(
    context: dg.AssetExecutionContext,
    store: ArtifactStore,
    source: str,
    settings: CompressionSettings,
    user: Project,
    horovod: HorovodLauncherResource,
) -> "str | Unsupported | None":
    """The distilled student's prefix, trained by a Horovod job as trained_model's is; the
    reason as ``Unsupported`` when it cannot be built or its job fails; None when not asked."""
    from lepton_core.compress import Unsupported
    from lepton_core.distill import student_job

    if not settings.distill_epochs:
        return None
    # Beside the variants, so retention keeps or drops it with its model generation.
    prefix = f"compressed/{source.rsplit('/', 1)[-1]}/student-{context.run.run_id[:8]}"
    try:
        job = student_job(store, source, settings, user.training, prefix)
        check_user_code(job["model_info"])
    except UserCodeError as exc:
        return Unsupported(f"the student cannot be built: {exc}")
    student = job["model_info"]
    context.log.info(f"distilling into {student['factory']} {student['kwargs']}")
    try:
        run_job(context, store, horovod, f"{prefix}/job.json", job)
    except HorovodJobError as exc:
        return Unsupported(f"the student's training failed: {exc}")
    return prefix


@dg.asset(
    deps=[trained_model],
    group_name="compression",
    kinds={"torch"},
    # The distilled student is a Horovod job: one at a time, as training.
    pool="horovod_training",
)
def compressed_model(
    context: dg.AssetExecutionContext,
    config: CompressionConfig,  # pyright: ignore[reportInvalidTypeForm]
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
    horovod: HorovodLauncherResource,
) -> dg.MaterializeResult:
    """The trained model, compressed: of fp32, fp16, bf16, pruned, structured, int8 and
    distilled (a smaller student the model taught, trained by a Horovod job when
    ``distill_epochs`` > 0), the variant smallest (or fastest) within the allowed loss of
    validation accuracy (or RMSE).

    Every variant the model supports is saved and measured: size on disk (and gzipped: a
    sparse model's zeros compress), sparsity, parameter count, the validation metric, CPU
    latency p50/p95 at batch 1 and throughput at batch 256. Variants the model does not
    support are listed with the reason. The table and a Pareto plot are in the metadata.
    """
    from lepton_core.compress import compress_model

    user = project.get_project()
    settings = effective(user.compression, config, "compressed_model")
    store = artifacts.get_store()
    pointer, consumed = upstream(store, context, "trained_model")
    source = pointer["prefix"]
    student = train_student(context, store, source, settings, user, horovod)
    result = compress_model(store, source, settings, context.log.info, student)
    rows, chosen, name = result["rows"], result["chosen"], result["name"]
    publish(
        store,
        context,
        "compressed_model",
        {"prefix": chosen["prefix"], "source": source, "variants": f"compressed/{name}"},
    )
    baseline = rows[0]
    return dg.MaterializeResult(
        metadata={
            "chosen_variant": chosen["variant"],
            "trained_model_from": f"{source} ({consumed})",
            "objective": settings.objective,
            f"chosen_{result['metric']}": chosen[result["metric"]],
            "size_ratio_vs_fp32": round(chosen["size_bytes"] / baseline["size_bytes"], 3),
            "latency_b1_ratio_vs_fp32": round(
                chosen["latency_b1_p50_ms"] / baseline["latency_b1_p50_ms"], 3
            ),
            "variants": dg.MetadataValue.md(markdown_table(pl.DataFrame(rows).drop("prefix"))),
            "skipped_variants": dg.MetadataValue.json(result["skipped"]),
            "pareto_plot": dg.MetadataValue.path(store.url(f"compressed/{name}/pareto.png")),
            "path": dg.MetadataValue.path(store.url(chosen["prefix"])),
        }
    )

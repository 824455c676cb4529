"""The compressed_model asset: every variant the model supports, one chosen by policy.

The work is in ``lepton_core.compress``; this asset resolves the settings and reports.
"""

import dagster as dg
import polars as pl

from lepton_assets.configs import CompressionConfig, effective
from lepton_assets.pointers import publish, upstream
from lepton_assets.training import trained_model
from lepton_core.compress import compress_model
from resources.artifact_store import ArtifactStoreResource
from resources.project import ProjectResource


def markdown_table(frame: pl.DataFrame) -> str:
    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = [
        "| " + " | ".join("" if v is None else str(v) for v in row) + " |"
        for row in frame.iter_rows()
    ]
    return "\n".join([header, rule, *body])


@dg.asset(
    deps=[trained_model],
    group_name="compression",
    kinds={"torch"},
)
def compressed_model(
    context: dg.AssetExecutionContext,
    config: CompressionConfig,  # pyright: ignore[reportInvalidTypeForm]
    artifacts: ArtifactStoreResource,
    project: ProjectResource,
) -> dg.MaterializeResult:
    """The trained model, compressed: of fp32, fp16, bf16, pruned, structured and int8, the
    variant smallest (or fastest) within the allowed loss of validation accuracy (or RMSE).

    Every variant the model supports is saved and measured: size on disk (and gzipped: a
    sparse model's zeros compress), sparsity, parameter count, the validation metric, CPU
    latency p50/p95 at batch 1 and throughput at batch 256. Variants the model does not
    support are listed with the reason. The table and a Pareto plot are in the metadata.
    """
    settings = effective(project.get_project().compression, config, "compressed_model")
    store = artifacts.get_store()
    pointer, consumed = upstream(store, context, "trained_model")
    source = pointer["prefix"]
    result = compress_model(store, source, settings, context.log.info)
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

"""Evaluation: the compressed candidate against the current champion, on the held-out test split.

Writes ``reports/<candidate>/report.html`` (self-contained, plots embedded),
``report.md``, ``confusion_matrix.png`` and ``evaluation.json``. The blocking ``blessed``
check decides whether ``champion_model`` may promote the candidate.
"""

import base64
import html
import io
from typing import Any

import dagster as dg
import numpy as np
from matplotlib.figure import Figure
from pydantic import Field
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from lepton_assets.champion_pointer import current_champion
from lepton_assets.compression import compressed_model, features_and_labels
from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.models import load_model, predict_logits
from lepton_assets.training import current_key, load_split
from resources.artifact_store import ArtifactStore, ArtifactStoreResource

BLESSED_CHECK = "blessed"


class EvaluationConfig(dg.Config):
    """The rules a candidate must meet to be promoted."""

    min_accuracy: float = Field(
        default=0.9, ge=0.0, le=1.0, description="absolute floor on test accuracy"
    )
    max_regression: float = Field(
        default=0.005, ge=0.0, description="largest test-accuracy drop against the champion"
    )


def evaluate_model(model: Any, features: Any, labels: Any, classes: list[int]) -> dict[str, Any]:
    predicted = predict_logits(model, features).argmax(1).numpy()
    truth = labels.numpy()
    k = list(range(len(classes)))
    precision, recall, f1, support = (
        np.asarray(values)
        for values in precision_recall_fscore_support(
            truth,
            predicted,
            labels=k,
            zero_division=0,  # pyright: ignore[reportArgumentType]
        )
    )
    return {
        "accuracy": round(float((predicted == truth).mean()), 5),
        "macro_f1": round(float(f1_score(truth, predicted, labels=k, average="macro")), 5),
        "per_class": [
            {
                "class": classes[i],
                "precision": round(float(precision[i]), 4),
                "recall": round(float(recall[i]), 4),
                "f1": round(float(f1[i]), 4),
                "support": int(support[i]),
            }
            for i in k
        ],
        "confusion_matrix": confusion_matrix(truth, predicted, labels=k).tolist(),
    }


def bless(
    candidate: dict[str, Any], champion: dict[str, Any] | None, config: EvaluationConfig
) -> list[str]:
    """The promotion rules the candidate breaks; empty means blessed."""
    broken = []
    if candidate["accuracy"] < config.min_accuracy:
        broken.append(
            f"test accuracy {candidate['accuracy']:.4f} is below the floor "
            f"{config.min_accuracy:.4f}"
        )
    if (
        champion is not None
        and candidate["accuracy"] < champion["accuracy"] - config.max_regression
    ):
        broken.append(
            f"test accuracy {candidate['accuracy']:.4f} is more than {config.max_regression:.4f} "
            f"below the champion's {champion['accuracy']:.4f}"
        )
    return broken


def confusion_png(matrix: list[list[int]], classes: list[int]) -> bytes:
    # A bare Figure renders with Agg and touches no global pyplot state: safe on a server.
    fig = Figure(figsize=(5, 4.5), dpi=100)
    ax = fig.subplots()
    ax.imshow(np.array(matrix), cmap="Blues")
    ax.set_xticks(range(len(classes)), [str(c) for c in classes])
    ax.set_yticks(range(len(classes)), [str(c) for c in classes])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            if value:
                ax.text(j, i, str(value), ha="center", va="center", fontsize=7)
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def report_markdown(ev: dict[str, Any]) -> str:
    cand, champ = ev["candidate"], ev["champion"]
    verdict = (
        "**BLESSED**: promoted to champion"
        if ev["blessed"]
        else (
            "**NOT BLESSED**: the champion stays. Broken rules:\n"
            + "\n".join(f"- {rule}" for rule in ev["broken_rules"])
        )
    )
    lines = [
        f"# Evaluation of `{ev['candidate_model']}`",
        "",
        f"Dataset version `{ev['dataset_version']}`, test split of {ev['test_rows']} samples. "
        f"Variant: `{ev['variant']}`.",
        "",
        f"Verdict: {verdict}",
        "",
        "| model | accuracy | macro F1 |",
        "|---|---|---|",
        f"| candidate | {cand['accuracy']:.4f} | {cand['macro_f1']:.4f} |",
    ]
    if champ is not None:
        lines.append(
            f"| champion `{ev['champion_model']}` | {champ['accuracy']:.4f} "
            f"| {champ['macro_f1']:.4f} |"
        )
    else:
        lines.append("| champion | (none yet) | |")
    lines += [
        "",
        "## Per class (candidate)",
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
        f"{r['support']} |"
        for r in cand["per_class"]
    ]
    lines += ["", "![confusion matrix](confusion_matrix.png)", ""]
    return "\n".join(lines)


def report_html(markdown: str, png: bytes, title: str) -> str:
    """A self-contained HTML page: the Markdown's tables and text, the plot inlined."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if table:
            head, *rows = table
            body.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
                + "</table>"
            )
            table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        text = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{html.escape(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{html.escape(line[3:])}</h2>")
        elif line.startswith("!["):
            data = base64.b64encode(png).decode()
            body.append(f'<img alt="confusion matrix" src="data:image/png;base64,{data}">')
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line:
            body.append(f"<p>{text}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def champion_metrics(
    store: ArtifactStore, features: Any, labels: Any, classes: list[int], num_features: int
) -> tuple[str | None, dict[str, Any] | None]:
    pointer = current_champion(store)
    if pointer is None:
        return None, None
    model, info = load_model(store, pointer["model_prefix"])
    if info["num_features"] != num_features or info["classes"] != classes:
        raise ValueError(
            f"champion {pointer['model_prefix']} takes {info['num_features']} features and classes "
            f"{info['classes']}; the candidate's dataset has {num_features} and {classes}. "
            "Roll back or clear the champion before switching datasets."
        )
    return pointer["model_prefix"], evaluate_model(model, features, labels, classes)


@dg.asset(
    deps=[compressed_model],
    group_name="evaluation",
    kinds={"torch", "html"},
    check_specs=[
        dg.AssetCheckSpec(
            BLESSED_CHECK,
            asset="evaluation_report",
            blocking=True,
            description="The candidate meets the accuracy floor and does not regress against "
            "the champion; champion_model waits on it.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """How good the compressed candidate is on the held-out test split, next to the champion.

    Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix, in a
    self-contained HTML report (and Markdown) linked below, with the promotion verdict.
    """
    store = artifacts.get_store()
    candidate_prefix = store.read_json(current_key("compressed_model"))["prefix"]
    model, info = load_model(store, candidate_prefix)
    spec = DatasetSpec.model_validate(
        store.read_json(f"datasets/{info['dataset_version']}/dataset.json")["spec"]
    )
    features, labels = features_and_labels(load_split(store, info["dataset_version"], "test"), spec)
    candidate = evaluate_model(model, features, labels, spec.classes)
    champion_prefix, champion = champion_metrics(
        store, features, labels, spec.classes, len(spec.feature_columns)
    )
    broken = bless(candidate, champion, config)
    ev = {
        "candidate_model": candidate_prefix,
        "variant": info["variant"],
        "dataset_version": info["dataset_version"],
        "test_rows": int(labels.shape[0]),
        "candidate": candidate,
        "champion_model": champion_prefix,
        "champion": champion,
        "blessed": not broken,
        "broken_rules": broken,
    }
    report_prefix = f"reports/{candidate_prefix.removeprefix('compressed/')}"
    png = confusion_png(candidate["confusion_matrix"], spec.classes)
    markdown = report_markdown(ev)
    store.write_bytes(f"{report_prefix}/confusion_matrix.png", png)
    store.write_text(f"{report_prefix}/report.md", markdown)
    store.write_text(f"{report_prefix}/report.html", report_html(markdown, png, candidate_prefix))
    store.write_json(f"{report_prefix}/evaluation.json", ev)
    store.write_json(current_key("evaluation_report"), {"prefix": report_prefix})
    context.log.info(f"test accuracy {candidate['accuracy']:.4f}; blessed={not broken} {broken}")
    return dg.MaterializeResult(
        metadata={
            "test_accuracy": candidate["accuracy"],
            "macro_f1": candidate["macro_f1"],
            "champion_accuracy": champion["accuracy"] if champion else None,
            "blessed": not broken,
            "report": dg.MetadataValue.path(store.url(f"{report_prefix}/report.html")),
            "summary": dg.MetadataValue.md(markdown.split("## Per class")[0]),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=BLESSED_CHECK,
                passed=not broken,
                severity=dg.AssetCheckSeverity.ERROR,
                description="; ".join(broken) if broken else "meets every promotion rule",
                metadata={
                    "test_accuracy": candidate["accuracy"],
                    "champion_accuracy": champion["accuracy"] if champion else None,
                },
            )
        ],
    )

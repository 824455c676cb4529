"""Evaluation: the compressed candidate against the current champion, on the held-out test split.

Writes ``reports/<model>/<variant>/report.html`` (one self-contained file, plots embedded),
``report.md`` with its PNGs beside it, and ``evaluation.json``. The blocking ``blessed``
check decides whether ``champion_model`` may promote the candidate, and the report says
which rule failed when it may not.
"""

import base64
import html
import re
import statistics
from typing import Any

import dagster as dg
import numpy as np
from pydantic import Field
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

from lepton_assets.champion_pointer import current_champion
from lepton_assets.compression import compressed_model, latency_ms
from lepton_assets.dataset_spec import DatasetSpec
from lepton_assets.models import load_model, predict_logits
from lepton_assets.plots import confusion_png, curves_png
from lepton_assets.training import current_key, features_and_labels, load_split
from resources.artifact_store import ArtifactStore, ArtifactStoreResource

BLESSED_CHECK = "blessed"
ECE_BINS = 15


class EvaluationConfig(dg.Config):
    """The rules a candidate must meet to be promoted."""

    min_accuracy: float = Field(
        default=0.9, ge=0.0, le=1.0, description="absolute floor on test accuracy"
    )
    max_regression: float = Field(
        default=0.005, ge=0.0, description="largest test-accuracy drop against the champion"
    )
    max_class_regression: float = Field(
        default=0.05,
        ge=0.0,
        description="largest drop of any one class's F1 against the champion",
    )


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def evaluate_model(model: Any, features: Any, labels: Any, classes: list[int]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class P/R/F1, confusion matrix, ECE and batch-1 latency."""
    probabilities = predict_logits(model, features).softmax(1).numpy()
    predicted = probabilities.argmax(1)
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
        "ece": round(expected_calibration_error(probabilities.max(1), predicted == truth), 5),
        "latency_b1_p50_ms": round(statistics.median(latency_ms(model, features[:1], 100)), 4),
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
    if champion is None:
        return broken
    if candidate["accuracy"] < champion["accuracy"] - config.max_regression:
        broken.append(
            f"test accuracy {candidate['accuracy']:.4f} is more than {config.max_regression:.4f} "
            f"below the champion's {champion['accuracy']:.4f}"
        )
    for mine, theirs in zip(candidate["per_class"], champion["per_class"], strict=True):
        if mine["f1"] < theirs["f1"] - config.max_class_regression:
            broken.append(
                f"class {mine['class']}: F1 {mine['f1']:.4f} is more than "
                f"{config.max_class_regression:.4f} below the champion's {theirs['f1']:.4f}"
            )
    return broken


def report_markdown(ev: dict[str, Any], variants: list[dict[str, Any]]) -> str:
    cand, champ = ev["candidate"], ev["champion"]
    if ev["blessed"]:
        verdict = "**BLESSED**: the candidate becomes the champion."
    else:
        verdict = "**NOT BLESSED**: the champion stays. Broken rules:\n" + "\n".join(
            f"- {rule}" for rule in ev["broken_rules"]
        )
    lines = [
        f"# Evaluation of `{ev['candidate_model']}`",
        "",
        f"Dataset version `{ev['dataset_version']}`, held-out test split of {ev['test_rows']} "
        f"samples. Compression variant: `{ev['variant']}`.",
        "",
        f"Verdict: {verdict}",
        "",
        "| model | accuracy | macro F1 | ECE | size (bytes) | latency b1 p50 (ms) |",
        "|---|---|---|---|---|---|",
        f"| candidate | {cand['accuracy']:.4f} | {cand['macro_f1']:.4f} | {cand['ece']:.4f} | "
        f"{ev['candidate_size_bytes']} | {cand['latency_b1_p50_ms']} |",
    ]
    if champ is not None:
        lines.append(
            f"| champion `{ev['champion_model']}` | {champ['accuracy']:.4f} | "
            f"{champ['macro_f1']:.4f} | {champ['ece']:.4f} | {ev['champion_size_bytes']} | "
            f"{champ['latency_b1_p50_ms']} |"
        )
        delta = (cand["accuracy"] - champ["accuracy"]) * 100
        lines += ["", f"Accuracy difference against the champion: {delta:+.2f} points."]
    else:
        lines.append("| champion | (none yet) | | | | |")
    champion_f1 = {r["class"]: r["f1"] for r in champ["per_class"]} if champ else {}
    lines += [
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | champion F1 | support |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
        f"{champion_f1.get(r['class'], '')} | {r['support']} |"
        for r in cand["per_class"]
    ]
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "## Training", ""]
    lines += ["![training curves](training_curves.png)", "", "## Compression variants", ""]
    columns = [
        "variant",
        "val_accuracy",
        "size_bytes",
        "size_gzip_bytes",
        "sparsity",
        "parameters",
        "latency_b1_p50_ms",
        "latency_b1_p95_ms",
        "throughput_b256_per_s",
    ]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for v in variants:
        marker = " (chosen)" if v["variant"] == ev["variant"] else ""
        cells = [f"{v['variant']}{marker}"] + [
            "" if v.get(c) is None else str(v[c]) for c in columns[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![Pareto plot](pareto.png)", ""]
    return "\n".join(lines)


IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<name>[\w.-]+\.png)\)$")


def report_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """A self-contained HTML page of the report's Markdown, every plot inlined."""
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

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
        return re.sub(r"`(.+?)`", r"<code>\1</code>", text)

    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [inline(c.strip()) for c in line.strip("|").split("|")]
            if not all(set(c) <= {"-"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        image = IMAGE.match(line)
        if image:
            data = base64.b64encode(images[image["name"]]).decode()
            body.append(
                f'<img alt="{html.escape(image["alt"])}" src="data:image/png;base64,{data}">'
            )
        elif line.startswith("# "):
            body.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("- "):
            body.append(f"<li>{inline(line[2:])}</li>")
        elif line:
            body.append(f"<p>{inline(line)}</p>")
    flush_table()
    style = (
        "body{font-family:sans-serif;max-width:70em;margin:2em auto}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:.2em .6em}"
        "img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def champion_metrics(
    store: ArtifactStore, features: Any, labels: Any, classes: list[int], num_features: int
) -> tuple[str | None, dict[str, Any] | None, int | None]:
    """(model prefix, metrics on this test split, weights size) of the champion, if any."""
    pointer = current_champion(store)
    if pointer is None:
        return None, None, None
    prefix = pointer["model_prefix"]
    model, info = load_model(store, prefix)
    if info["num_features"] != num_features or info["classes"] != classes:
        raise ValueError(
            f"champion {prefix} takes {info['num_features']} features and classes "
            f"{info['classes']}; the candidate's dataset has {num_features} and {classes}. "
            "Roll back or clear the champion before switching datasets."
        )
    size = store.size(f"{prefix}/model.pt")
    return prefix, evaluate_model(model, features, labels, classes), size


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
            "the champion, overall or for any class; champion_model waits on it.",
        )
    ],
)
def evaluation_report(
    context: dg.AssetExecutionContext,
    config: EvaluationConfig,
    artifacts: ArtifactStoreResource,
) -> dg.MaterializeResult:
    """Which model wins, by how much, at what size and speed, and whether it is promoted.

    The compressed candidate and the current champion scored on the same held-out test split:
    accuracy, macro-F1, per-class precision/recall/F1, confusion matrix, calibration (ECE),
    size and CPU latency; plus training curves, the compression variants and their Pareto
    plot, in one self-contained HTML report (and Markdown) linked below.
    """
    store = artifacts.get_store()
    pointer = store.read_json(current_key("compressed_model"))
    candidate_prefix = pointer["prefix"]
    model, info = load_model(store, candidate_prefix)
    version = info["dataset_version"]
    spec = DatasetSpec.model_validate(store.read_json(f"datasets/{version}/dataset.json")["spec"])
    features, labels = features_and_labels(load_split(store, version, "test"), spec)
    candidate = evaluate_model(model, features, labels, spec.classes)
    champion_prefix, champion, champion_size = champion_metrics(
        store, features, labels, spec.classes, len(spec.feature_columns)
    )
    broken = bless(candidate, champion, config)
    ev = {
        "candidate_model": candidate_prefix,
        "variant": info["variant"],
        "dataset_version": version,
        "test_rows": int(labels.shape[0]),
        "candidate": candidate,
        "candidate_size_bytes": store.size(f"{candidate_prefix}/model.pt"),
        "champion_model": champion_prefix,
        "champion": champion,
        "champion_size_bytes": champion_size,
        "blessed": not broken,
        "broken_rules": broken,
    }
    variants = store.read_json(f"{pointer['variants']}/variants.json")
    images = {
        "confusion_matrix.png": confusion_png(candidate["confusion_matrix"], spec.classes),
        "training_curves.png": curves_png(store.read_json(f"{pointer['source']}/history.json")),
        "pareto.png": store.read_bytes(f"{pointer['variants']}/pareto.png"),
    }
    report_prefix = f"reports/{candidate_prefix.removeprefix('compressed/')}"
    markdown = report_markdown(ev, variants)
    for name, data in images.items():
        store.write_bytes(f"{report_prefix}/{name}", data)
    store.write_text(f"{report_prefix}/report.md", markdown)
    store.write_text(
        f"{report_prefix}/report.html", report_html(markdown, images, candidate_prefix)
    )
    store.write_json(f"{report_prefix}/evaluation.json", ev)
    store.write_json(current_key("evaluation_report"), {"prefix": report_prefix})
    context.log.info(f"test accuracy {candidate['accuracy']:.4f}; blessed={not broken} {broken}")
    return dg.MaterializeResult(
        metadata={
            "test_accuracy": candidate["accuracy"],
            "macro_f1": candidate["macro_f1"],
            "ece": candidate["ece"],
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
                    "broken_rules": dg.MetadataValue.json(broken),
                },
            )
        ],
    )

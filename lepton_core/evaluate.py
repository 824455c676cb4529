"""Evaluation: the compressed candidate against the current champion, on the held-out test split.

Writes ``reports/<model>/<variant>/report.html`` (one self-contained file, plots embedded),
``report.md`` with its PNGs beside it, and ``evaluation.json``. ``bless`` lists the promotion
rules a candidate breaks; the report names them.

Classification: accuracy, macro-F1, per-class precision/recall/F1, confusion matrix,
calibration error. Regression: RMSE, MAE, R² and a predicted-vs-true plot. Both: size and
CPU latency.
"""

import base64
import html
import json
import math
import re
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl
import torch

from lepton_core.compress import latency_ms
from lepton_core.data import load_split, target_values
from lepton_core.models import champion_files, load_model, model_inputs, model_scores
from lepton_core.plots import confusion_png, curves_png, scatter_png
from lepton_core.registry import current_champion
from lepton_core.spec import DatasetSpec, EvaluationSettings
from lepton_core.store import ArtifactStore
from lepton_core.tasks import significant, task_of

ECE_BINS = 15
Z95 = 1.959964  # the normal quantile of a two-sided 95 % interval


def wilson_interval(successes: int, n: int) -> list[float]:
    """95 % Wilson score interval of a proportion (good at small n and near 0 or 1)."""
    if n == 0:
        return [0.0, 1.0]
    p, z2 = successes / n, Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * np.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [round(float(centre - half), 5), round(float(centre + half), 5)]


def mean_interval(values: np.ndarray, transform: Callable[[float], float] = float) -> list:
    """95 % interval of a mean of per-row ``values`` (normal approximation, O(rows) memory),
    through a monotone ``transform`` (``sqrt`` turns the mean squared error's into RMSE's)."""
    half = Z95 * float(values.std(ddof=1)) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    low, high = max(float(values.mean()) - half, 0.0), float(values.mean()) + half
    return [significant(transform(low)), significant(transform(high))]


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width bins."""
    edges = np.linspace(0.0, 1.0, ECE_BINS + 1)
    total = 0.0
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > low) & (confidence <= high)
        if in_bin.any():
            total += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total)


def classification_metrics(scores: torch.Tensor, target: torch.Tensor, classes: list):
    """Metrics of class probabilities against class indices; classes are named by label."""
    # scikit-learn takes a second to import: here, not in every process that loads the module.
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    probabilities = scores.numpy()
    predicted = probabilities.argmax(1)
    truth = target.numpy()
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
    correct = int((predicted == truth).sum())
    return {
        "accuracy": round(float((predicted == truth).mean()), 5),
        "intervals": {"accuracy": wilson_interval(correct, len(truth))},
        "macro_f1": round(float(f1_score(truth, predicted, labels=k, average="macro")), 5),
        "ece": round(expected_calibration_error(probabilities.max(1), predicted == truth), 5),
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


def regression_metrics(predicted: torch.Tensor, target: torch.Tensor) -> dict[str, Any]:
    """Metrics of predictions against the truth, both in the target's unit."""
    predicted, truth = predicted.double(), target.double()
    error = predicted - truth
    total = float(((truth - truth.mean()) ** 2).sum())
    errors = error.numpy()
    return {
        "rmse": significant(float(error.pow(2).mean().sqrt())),
        "mae": significant(float(error.abs().mean())),
        "r2": round(1.0 - float(error.pow(2).sum()) / total, 5) if total > 0 else None,
        "intervals": {
            "rmse": mean_interval(errors**2, math.sqrt),
            "mae": mean_interval(np.abs(errors)),
        },
    }


def evaluate_model(
    model: Any, info: dict[str, Any], frame: pl.DataFrame, truth: torch.Tensor
) -> tuple[dict[str, Any], torch.Tensor]:
    """(the task's metrics plus batch-1 latency, the scores) of a model on raw rows, which it
    encodes with its own preprocessing; ``truth`` is in the user's terms (``target_values``)."""
    inputs = model_inputs(info, frame)
    scores = model_scores(model, info, inputs)
    data = info["dataset_info"]
    metrics = (
        classification_metrics(scores, truth, data["classes"])
        if data["task"] == "classification"
        else regression_metrics(scores, truth)
    )
    single = [x[:1] for x in inputs]
    metrics["latency_b1_p50_ms"] = round(statistics.median(latency_ms(model, single, 100)), 4)
    return metrics, scores


def bless(
    task: str,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    settings: EvaluationSettings,
) -> list[str]:
    """The promotion rules the candidate breaks; empty means blessed."""
    if task == "regression":
        return bless_regression(candidate, champion, settings)
    broken = []
    if candidate["accuracy"] < settings.min_accuracy:
        broken.append(
            f"test accuracy {candidate['accuracy']:.4f} is below the floor "
            f"{settings.min_accuracy:.4f}"
        )
    if champion is None:
        return broken
    if candidate["accuracy"] < champion["accuracy"] - settings.max_regression:
        broken.append(
            f"test accuracy {candidate['accuracy']:.4f} is more than "
            f"{settings.max_regression:.4f} below the champion's {champion['accuracy']:.4f}"
        )
    for mine, theirs in zip(candidate["per_class"], champion["per_class"], strict=True):
        if mine["f1"] < theirs["f1"] - settings.max_class_regression:
            broken.append(
                f"class {mine['class']}: F1 {mine['f1']:.4f} is more than "
                f"{settings.max_class_regression:.4f} below the champion's {theirs['f1']:.4f}"
            )
    return broken


def bless_regression(
    candidate: dict[str, Any], champion: dict[str, Any] | None, settings: EvaluationSettings
) -> list[str]:
    broken = []
    r2 = candidate["r2"]
    if r2 is None or r2 < settings.min_r2:
        broken.append(f"test R² {r2} is below the floor {settings.min_r2:.4f}")
    if settings.max_rmse is not None and candidate["rmse"] > settings.max_rmse:
        broken.append(
            f"test RMSE {candidate['rmse']:.4f} is above the ceiling {settings.max_rmse:.4f}"
        )
    if champion is not None:
        allowed = champion["rmse"] * (1 + settings.max_rmse_regression)
        if candidate["rmse"] > allowed:
            broken.append(
                f"test RMSE {candidate['rmse']:.4f} is more than "
                f"{settings.max_rmse_regression:.1%} above the champion's {champion['rmse']:.4f}"
            )
    return broken


# -- the report ------------------------------------------------------------------------------
SUMMARY = {
    "classification": ("accuracy", "macro_f1", "ece"),
    "regression": ("rmse", "mae", "r2"),
}
VARIANT_COLUMNS = [
    "size_bytes",
    "size_gzip_bytes",
    "sparsity",
    "parameters",
    "latency_b1_p50_ms",
    "latency_b1_p95_ms",
    "throughput_b256_per_s",
]


def cell(value: Any) -> str:
    if value is None:
        return ""
    # Significant digits: a metric in the target's unit may be 0.00015 or 1.2e6.
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def tuned_line(tuned: dict[str, Any] | None) -> str:
    """Which configuration trained the model: the project's, or a study's best trial."""
    if not tuned:
        return "Hyperparameters: the project's (no tuning study)."
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in tuned["params"].items())
    return (
        f"Hyperparameters: tuned by study `{tuned['study']}`, trial {tuned['trial']} "
        f"({tuned['metric']} {tuned['value']:.5g} on validation): {params}."
    )


def report_markdown(ev: dict[str, Any], variants: dict[str, Any]) -> str:
    """The report as Markdown. Values from data and user code are plain text here; the HTML
    rendering escapes every one of them."""
    task, cand, champ = ev["task"], ev["candidate"], ev["champion"]
    if ev["blessed"]:
        verdict = "**BLESSED**: the candidate becomes the champion."
    else:
        verdict = "**NOT BLESSED**: the champion stays. Broken rules:\n" + "\n".join(
            f"- {rule}" for rule in ev["broken_rules"]
        )
    summary = SUMMARY[task]
    lines = [
        f"# Evaluation of `{ev['candidate_model']}`",
        "",
        f"Task {task}; model factory `{ev['factory']}`. Dataset version "
        f"`{ev['dataset_version']}`, held-out test split of {ev['test_rows']} samples. "
        f"Compression variant: `{ev['variant']}`.",
        "",
        tuned_line(ev.get("tuned")),
        "",
        f"Verdict: {verdict}",
        "",
        "| model | " + " | ".join(summary) + " | size (bytes) | latency b1 p50 (ms) |",
        "|---|" + "---|" * (len(summary) + 2),
        "| candidate | "
        + " | ".join(cell(cand[m]) for m in summary)
        + f" | {ev['candidate_size_bytes']} | {cand['latency_b1_p50_ms']} |",
    ]
    if champ is not None:
        lines.append(
            f"| champion `{ev['champion_model']}` | "
            + " | ".join(cell(champ[m]) for m in summary)
            + f" | {ev['champion_size_bytes']} | {champ['latency_b1_p50_ms']} |"
        )
    else:
        lines.append("| champion | (none yet) |" + " |" * (len(summary) + 1))
    lines += ["", *per_class_lines(cand, champ)] if task == "classification" else []
    plot = "confusion_matrix.png" if task == "classification" else "predicted_vs_true.png"
    lines += ["", f"![test predictions]({plot})", "", "## Training", ""]
    lines += ["![training curves](training_curves.png)", "", "## Compression variants", ""]
    columns = ["variant", ev["metric"], *VARIANT_COLUMNS]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for v in variants["built"]:
        marker = " (chosen)" if v["variant"] == ev["variant"] else ""
        cells = [f"{v['variant']}{marker}"] + [cell(v.get(c)) for c in columns[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "![Pareto plot](pareto.png)", ""]
    if variants["skipped"]:
        lines += ["Skipped variants:", ""]
        lines += [f"- {s['variant']}: {s['reason']}" for s in variants["skipped"]]
    return "\n".join(lines)


def per_class_lines(cand: dict[str, Any], champ: dict[str, Any] | None) -> list[str]:
    champion_f1 = {r["class"]: r["f1"] for r in champ["per_class"]} if champ else {}
    lines = [
        "## Per class",
        "",
        "| class | precision | recall | F1 | champion F1 | support |",
        "|---|---|---|---|---|---|",
    ]
    return lines + [
        f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
        f"{champion_f1.get(r['class'], '')} | {r['support']} |"
        for r in cand["per_class"]
    ]


IMAGE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<name>[\w.-]+\.png)\)$")


def report_html(markdown: str, images: dict[str, bytes], title: str) -> str:
    """A self-contained HTML page of the report's Markdown, every plot inlined and every
    text escaped (values from data and user code are never markup)."""
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


# -- the whole evaluation --------------------------------------------------------------------
def check_comparable(
    candidate: dict[str, Any], champion: dict[str, Any], frame: pl.DataFrame, prefix: str
) -> None:
    """The champion can be scored on the candidate's test rows: same task and labels, and
    every column its own spec reads is there (each model encodes the rows itself, so
    vocabularies, fill values and target scales may differ)."""
    mine, theirs = candidate["dataset_info"], champion["dataset_info"]
    same = all(mine.get(k) == theirs.get(k) for k in ("task", "classes"))
    needed = DatasetSpec.model_validate(champion["spec"]).columns
    lacking = [c for c in needed if c not in frame.columns]
    if not same or lacking:
        raise ValueError(
            f"champion {prefix} was trained for other data (task {theirs['task']}, classes "
            f"{theirs.get('classes')}, columns the test rows lack: {lacking}); the candidate's "
            f"task is {mine['task']}, classes {mine.get('classes')}. Roll back or clear the "
            "champion before switching datasets."
        )


def champion_metrics(
    store: ArtifactStore, frame: pl.DataFrame, truth: torch.Tensor, info: dict[str, Any]
) -> tuple[str | None, dict[str, Any] | None, int | None]:
    """(model prefix, metrics on this test split, weights size) of the champion, if any."""
    pointer = current_champion(store)
    if pointer is None:
        return None, None, None
    prefix = pointer["model_prefix"]
    model, champion_info = load_model(store, prefix, champion_files(pointer))
    check_comparable(info, champion_info, frame, prefix)
    size = store.size(f"{prefix}/model.pt")
    return prefix, evaluate_model(model, champion_info, frame, truth)[0], size


def evaluate_candidate(
    store: ArtifactStore, compressed: dict[str, Any], settings: EvaluationSettings
) -> tuple[dict[str, Any], str]:
    """Score the candidate and the champion, write the report; (evaluation, report prefix).

    ``compressed`` is the compression pointer: ``prefix`` (the chosen variant), ``source``
    (the trained model) and ``variants`` (the folder of all variants)."""
    candidate_prefix = compressed["prefix"]
    model, info = load_model(store, candidate_prefix)
    version, task = info["dataset_version"], task_of(info["dataset_info"]["task"])
    frame = load_split(store, version, "test")
    truth = target_values(frame, DatasetSpec.model_validate(info["spec"]))
    candidate, scores = evaluate_model(model, info, frame, truth)
    champion_prefix, champion, champion_size = champion_metrics(store, frame, truth, info)
    broken = bless(task.name, candidate, champion, settings)
    ev = {
        "task": task.name,
        "metric": task.metric,
        "factory": info["factory"],
        "tuned": info.get("tuned"),
        "candidate_model": candidate_prefix,
        "variant": info["variant"],
        "dataset_version": version,
        "test_rows": frame.height,
        "candidate": candidate,
        "candidate_size_bytes": store.size(f"{candidate_prefix}/model.pt"),
        "champion_model": champion_prefix,
        "champion": champion,
        "champion_size_bytes": champion_size,
        "blessed": not broken,
        "broken_rules": broken,
        "rules": settings.model_dump(),
    }
    variants = store.read_json(f"{compressed['variants']}/variants.json")
    history = store.read_json(f"{compressed['source']}/history.json")
    if task.name == "classification":
        plot = (
            "confusion_matrix.png",
            confusion_png(candidate["confusion_matrix"], info["dataset_info"]["classes"]),
        )
    else:
        plot = ("predicted_vs_true.png", scatter_png(truth.numpy(), scores.numpy()))
    images = {
        plot[0]: plot[1],
        "training_curves.png": curves_png(history, task.metric),
        "pareto.png": store.read_bytes(f"{compressed['variants']}/pareto.png"),
    }
    report_prefix = report_prefix_of(candidate_prefix)
    markdown = report_markdown(ev, variants)
    for name, data in images.items():
        store.write_bytes(f"{report_prefix}/{name}", data)
    store.write_text(f"{report_prefix}/report.md", markdown)
    store.write_text(
        f"{report_prefix}/report.html", report_html(markdown, images, candidate_prefix)
    )
    store.write_json(f"{report_prefix}/evaluation.json", ev)
    return ev, report_prefix


def report_prefix_of(model_prefix: str) -> str:
    """Where the evaluation of the model at ``model_prefix`` is written."""
    return f"reports/{model_prefix.removeprefix('compressed/')}"


def headline(ev: dict[str, Any]) -> dict[str, Any]:
    """The candidate's summary metrics (for metadata, the CLI and the champion record)."""
    return {m: ev["candidate"][m] for m in SUMMARY[ev["task"]]}

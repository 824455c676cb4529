"""The report's plots, rendered to PNG bytes.

A bare matplotlib ``Figure`` renders with Agg and touches no global pyplot state: safe in a
server process and in threads.
"""

import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def figure(width: float, height: float) -> "Figure":
    """A bare figure at 100 dpi. matplotlib is imported at the first plot, not by every
    process that imports the pipeline (0.4-0.5 s of each step's start here)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def png(fig: "Figure") -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def confusion_png(matrix: list[list[int]], classes: list[int]) -> bytes:
    fig = figure(5, 4.5)
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
    return png(fig)


def curves_png(history: list[dict[str, float]], metric: str) -> bytes:
    """Train and validation loss, and the validation metric (accuracy or RMSE), per epoch."""
    epochs = [h["epoch"] for h in history]
    fig = figure(9, 3.5)
    loss_ax, acc_ax = fig.subplots(1, 2)
    loss_ax.plot(epochs, [h["train_loss"] for h in history], label="train")
    loss_ax.plot(epochs, [h["val_loss"] for h in history], label="validation")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.legend()
    acc_ax.plot(epochs, [h[metric] for h in history], color="green")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel(metric.replace("_", " "))
    fig.suptitle("Training curves")
    return png(fig)


def scatter_png(truth: np.ndarray, predicted: np.ndarray) -> bytes:
    """Regression: predicted against true values on the test split, with the diagonal."""
    fig = figure(4.5, 4.5)
    ax = fig.subplots()
    ax.scatter(truth, predicted, s=6, alpha=0.5)
    low, high = float(min(truth.min(), predicted.min())), float(max(truth.max(), predicted.max()))
    ax.plot([low, high], [low, high], color="red", linewidth=1)
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("Predicted vs true (test split)")
    return png(fig)


def pareto_png(rows: list[dict[str, Any]], chosen: str, metric: str) -> bytes:
    """The validation metric against size and against latency, the chosen variant circled."""
    fig = figure(9, 3.8)
    axes = fig.subplots(1, 2)
    for ax, axis, label in (
        (axes[0], "size_gzip_bytes", "gzipped size (KiB)"),
        (axes[1], "latency_b1_p50_ms", "latency, batch 1, p50 (ms)"),
    ):
        scale = 1024 if axis == "size_gzip_bytes" else 1
        for r in rows:
            x, y = r[axis] / scale, r[metric]
            ax.scatter(
                [x],
                [y],
                s=80 if r["variant"] == chosen else 30,
                facecolors="none" if r["variant"] == chosen else None,
                edgecolors="red" if r["variant"] == chosen else None,
            )
            ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Compression variants (chosen: {chosen})")
    return png(fig)


def study_png(rows: list[dict[str, Any]], metric: str, higher_is_better: bool) -> bytes:
    """A tuning study: each trial's epochs (pruned ones end early), and the best value so far."""
    fig = figure(9, 3.5)
    trials_ax, best_ax = fig.subplots(1, 2)
    colours = {"COMPLETE": "tab:blue", "PRUNED": "tab:orange", "FAIL": "tab:red"}
    for row in rows:
        trials_ax.bar(row["trial"], row["epochs"], color=colours.get(row["state"], "grey"))
    trials_ax.set_xlabel("trial")
    trials_ax.set_ylabel("epochs run (orange: pruned, red: failed)")
    done = [(r["trial"], r["value"]) for r in rows if r["value"] is not None]
    best_ax.plot([t for t, _ in done], [v for _, v in done], "o", label="trial")
    if done:
        best, running = [], done[0][1]
        for _, value in done:
            running = max(running, value) if higher_is_better else min(running, value)
            best.append(running)
        best_ax.step([t for t, _ in done], best, where="post", label="best so far")
    best_ax.set_xlabel("trial")
    best_ax.set_ylabel(metric.replace("_", " "))
    best_ax.legend()
    fig.suptitle("Tuning study")
    return png(fig)

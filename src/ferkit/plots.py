"""PNG figures: training curves, confusion matrices, reliability diagrams and video timelines (matplotlib, no
display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

# The file kinds a figure is saved as (savefig picks the format by the suffix), PNG first as the default.
PLOT_SUFFIXES = (".png", *(f".{k}" for k in FigureCanvasBase.get_supported_filetypes() if k != "png"))
EPOCH_POINTS = {"marker": "o", "markersize": 4}  # each epoch a visible point, even when it is the only one


def plot_curves(history: Sequence[dict], path: Path, watched: Mapping[str, str] | None = None) -> Figure:
    """Loss, accuracy (with any --watch folder's: ``watched`` maps a folder's name to its column) and learning rate
    per epoch, as a PNG; returns the (closed) figure.

    Every epoch is a marker, so a one-epoch run shows its points, and the epoch axis has whole-number ticks.
    """
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(14, 4))
    for ax, key, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], **EPOCH_POINTS, label="train")
        ax.plot(epochs, [r[f"select_{key}"] for r in history], **EPOCH_POINTS, label="selection split")
        ax.set(ylabel=title.lower(), title=title)
    # Watched folders' accuracies, from the epoch each was first watched.
    for folder, key in (watched or {}).items():
        rows = [r for r in history if r.get(key) not in (None, "")]
        ax_acc.plot([r["epoch"] for r in rows], [r[key] for r in rows], **EPOCH_POINTS, label=f"{folder} (watched)")
    ax_loss.legend()
    ax_acc.legend()
    ax_lr.plot(epochs, [r["lr"] for r in history], **EPOCH_POINTS, color="tab:green")
    # Log scale: the cosine's tail (down to 1e-6) would otherwise look like zero.
    ax_lr.set(ylabel="learning rate at the epoch's end", title="Learning rate", yscale="log")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return fig


def plot_confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path, title: str = "") -> None:
    cm = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "Confusion matrix (row-normalised, counts shown)")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if rates[i, j] > 0.5 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(bins: Sequence[dict], path: Path, title: str = "") -> None:
    """Accuracy against confidence per bin (``evaluation.metrics.reliability_bins``); the diagonal is perfect
    calibration, bars below it overconfidence. Each bar is labelled with its number of images."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    filled = [b for b in bins if b["count"]]
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [(b["lower"] + b["upper"]) / 2 for b in filled]
    ax.bar(centres, [b["accuracy"] for b in filled], width=width * 0.9, color="tab:blue", label="accuracy")
    ax.plot(centres, [b["confidence"] for b in filled], "o", color="tab:orange", label="mean confidence")
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    for x, b in zip(centres, filled):
        ax.text(x, 0.01, str(b["count"]), ha="center", va="bottom", fontsize=7, rotation=90, color="white")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title or "Reliability diagram")
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# More panels than this would be too small to read; the longest tracks are the people, short ones mostly stray boxes.
TIMELINE_PANELS = 6


def plot_timeline(tracks: Sequence[tuple[str, np.ndarray, np.ndarray]], classes: Sequence[str], path: Path) -> None:
    """One panel per (title, times, probabilities N x classes) track, the first :data:`TIMELINE_PANELS` of them."""
    shown = list(tracks[:TIMELINE_PANELS])
    fig, axes = plt.subplots(max(len(shown), 1), 1, figsize=(10, 1 + 2.2 * max(len(shown), 1)), squeeze=False)
    for ax, (title, times, probs) in zip(axes[:, 0], shown):
        for j, c in enumerate(classes):
            ax.plot(times, probs[:, j], ".-" if len(times) < 3 else "-", label=c)
        ax.set(ylabel="probability", ylim=(0, 1), title=title)
        ax.grid(alpha=0.3)
    if not shown:
        axes[0, 0].set(title="no face was tracked")
    more = f" ({len(tracks) - len(shown)} shorter tracks not shown)" if len(tracks) > len(shown) else ""
    axes[-1, 0].set_xlabel("time (s)" + more)
    axes[0, 0].legend(loc="upper right", ncol=len(classes), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

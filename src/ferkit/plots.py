"""PNG figures: training curves and confusion matrices (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402


def plot_curves(history: Sequence[dict], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["select_loss"] for r in history], label="selection split")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [r["select_acc"] for r in history], label="selection split")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rates[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_timeline(results: Sequence, classes: Sequence[str], path: Path) -> None:
    """Probabilities of the largest face in each video frame over time (gaps where no face was found)."""
    times = [r.time_s for r in results]
    probs = np.full((len(results), len(classes)), np.nan)
    for i, r in enumerate(results):
        if r.faces:
            probs[i] = [r.faces[0].probabilities[c] for c in classes]
    fig, ax = plt.subplots(figsize=(10, 4))
    for j, c in enumerate(classes):
        ax.plot(times, probs[:, j], label=c)
    ax.set(xlabel="time (s)", ylabel="probability", ylim=(0, 1), title="Expression of the largest face")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", ncol=len(classes), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

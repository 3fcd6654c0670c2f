"""The metrics users report (accuracy, macro-F1, macro recall, per-class figures, the confusion matrix, the
calibration error) and their written forms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..plots import plot_confusion

# Guo et al. (2017): 15 equal-width confidence bins, the figure papers on calibration compare.
ECE_BINS = 15


def reliability_bins(labels: np.ndarray, probs: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Per equal-width bin (lower, upper] of top-class confidence: image count, mean confidence, accuracy."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left" on the inner edges puts a confidence equal to an edge in the bin below it: (lower, upper].
    index = np.searchsorted(edges[1:-1], confidence, side="left")
    rows = []
    for b in range(bins):
        inside = index == b
        count = int(inside.sum())
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[inside].mean()) if count else None,
                "accuracy": float(correct[inside].mean()) if count else None,
            }
        )
    return rows


def expected_calibration_error(bins: Sequence[dict]) -> float:
    """The image-weighted mean gap between accuracy and confidence over the bins of :func:`reliability_bins`."""
    total = sum(b["count"] for b in bins)
    gaps = sum(b["count"] * abs(b["accuracy"] - b["confidence"]) for b in bins if b["count"])
    return float(gaps / total) if total else 0.0


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], min_support: int = 1) -> dict:
    """``macro_recall`` and ``macro_f1`` average over the classes with at least ``min_support`` images: a class the
    data does not have (Neutral in CK+) has no recall to average, and a handful of images none worth reading."""
    # Imported here: scikit-learn takes most of a second to import, and predicting one photo never needs it.
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    predicted = probs.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    counted = [i for i in indices if support[i] >= max(min_support, 1)]
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
    bins = reliability_bins(labels, probs)
    return {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1[counted])) if counted else 0.0,
        "macro_recall": float(np.mean(recall[counted])) if counted else 0.0,
        "macro_classes": [classes[i] for i in counted],
        "loss": float(-np.log(picked).mean()),
        "ece": expected_calibration_error(bins),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
        "reliability": bins,
    }


PAIRED_DRAWS = 2000


def paired_difference(
    labels: np.ndarray, predicted: np.ndarray, other: np.ndarray, counted: Sequence[int], seed: int = 0
) -> dict:
    """Accuracy and macro recall (over the class indices ``counted``) of ``predicted`` minus ``other``'s, read on the
    same images, each with a 95% interval over bootstrap draws of the images shared by both.

    Two accuracies near 69% on 3,589 images each carry a standard error near 0.77 point, yet most images are read
    alike by both models: on the same draws the images' own difficulty cancels, and the difference's interval is
    several times narrower than either accuracy's.
    """

    def recall(y: np.ndarray, p: np.ndarray) -> float:
        present = [c for c in counted if (y == c).any()]  # a rare class may miss a draw
        return float(np.mean([(p[y == c] == c).mean() for c in present]))

    rng = np.random.default_rng(seed)
    accuracy, macro = [], []
    for _ in range(PAIRED_DRAWS):
        pick = rng.integers(0, len(labels), len(labels))
        y, a, b = labels[pick], predicted[pick], other[pick]
        accuracy.append((a == y).mean() - (b == y).mean())
        macro.append(recall(y, a) - recall(y, b))
    return {
        "accuracy": float((predicted == labels).mean() - (other == labels).mean()),
        "accuracy_95": [float(v) for v in np.percentile(accuracy, [2.5, 97.5])],
        "macro_recall": recall(labels, predicted) - recall(labels, other),
        "macro_recall_95": [float(v) for v in np.percentile(macro, [2.5, 97.5])],
        "read_differently": float((predicted != other).mean()),
        "draws": PAIRED_DRAWS,
    }


def format_difference(difference: dict) -> str:
    a, r = difference["accuracy_95"], difference["macro_recall_95"]
    return (
        f"accuracy {difference['accuracy']:+.4f} (95% {a[0]:+.4f} to {a[1]:+.4f}), macro recall "
        f"{difference['macro_recall']:+.4f} ({r[0]:+.4f} to {r[1]:+.4f}), paired over {difference['draws']} draws of "
        f"the same images; {difference['read_differently']:.1%} of them read differently"
    )


def write_report(metrics: dict, classes: Sequence[str], out_dir: Path, stem: str, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion(metrics["confusion_matrix"], classes, out_dir / f"{stem}_confusion.png", title)


def format_metrics(metrics: dict, classes: Sequence[str]) -> str:
    macro = metrics["macro_classes"]
    over = "all classes" if len(macro) == len(classes) else f"{len(macro)} classes: {', '.join(macro)}"
    lines = [
        f"images {metrics['images']}  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}  "
        f"macro recall {metrics['macro_recall']:.4f} ({over})  ECE {metrics['ece']:.4f}",
        f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}",
    ]
    for c in classes:
        m = metrics["per_class"][c]
        # A class with no images here (CK+ has no Neutral) has no recall: a dash, not a 0 that reads as a failure.
        recall, f1 = (f"{m['recall']:>8.3f}", f"{m['f1']:>8.3f}") if m["support"] else (f"{'-':>8}", f"{'-':>8}")
        lines.append(f"{c:<10}{m['precision']:>10.3f}{recall}{f1}{m['support']:>9}")
    lines.append("confusion matrix (rows: true class, columns: predicted)")
    width = max(len(c) for c in classes) + 2
    lines.append(" " * width + "".join(f"{c:>{width}}" for c in classes))
    for c, row in zip(classes, metrics["confusion_matrix"]):
        lines.append(f"{c:<{width}}" + "".join(f"{n:>{width}}" for n in row))
    return "\n".join(lines)

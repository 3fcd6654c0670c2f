"""The metrics users report (accuracy, macro-F1, per-class figures, the confusion matrix) and their written forms."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from ..plots import plot_confusion


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    predicted = probs.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    picked = np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)
    return {
        "images": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "macro_f1": float(f1_score(labels, predicted, labels=indices, average="macro", zero_division=0)),
        "loss": float(-np.log(picked).mean()),
        "per_class": {
            c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for c, p, r, f, s in zip(classes, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(labels, predicted, labels=indices).tolist(),
    }


def write_report(metrics: dict, classes: Sequence[str], out_dir: Path, stem: str, title: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(metrics, indent=2) + "\n")
    plot_confusion(metrics["confusion_matrix"], classes, out_dir / f"{stem}_confusion.png", title)


def format_metrics(metrics: dict, classes: Sequence[str]) -> str:
    lines = [
        f"images {metrics['images']}  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}",
        f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}",
    ]
    for c in classes:
        m = metrics["per_class"][c]
        lines.append(f"{c:<10}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9}")
    lines.append("confusion matrix (rows true, columns predicted): " + json.dumps(metrics["confusion_matrix"]))
    return "\n".join(lines)

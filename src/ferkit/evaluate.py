"""Evaluation: class probabilities (optionally with test-time augmentation) and the metrics users report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.transforms.v2 import functional as TF

from .checkpoint import check_classes
from .config import Config
from .data import FerDataset, load_splits
from .inference import load_for_inference
from .plots import plot_confusion
from .runtime import autocast, resolve_device
from .transforms import build_test_transform

TTA_MODES = ("none", "flip", "tencrop")


def tta_views(x: Tensor, mode: str) -> list[Tensor]:
    """Views of a normalised batch whose softmax outputs are averaged."""
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=[-1])]
    if mode == "tencrop":
        # Crops of a 12.5% larger resize keep the model's input size: four corners, centre, and their mirrors.
        size = x.shape[-1]
        larger = F.interpolate(x, size=(size * 9 // 8, size * 9 // 8), mode="bilinear", align_corners=False,
                               antialias=False)
        return list(TF.ten_crop(larger, [size, size]))
    raise ValueError(f"unknown TTA mode {mode!r}; choose from {TTA_MODES}")


@torch.no_grad()
def predict_probs(model: nn.Module, batch: Tensor, precision: str = "fp32", tta: str = "none") -> Tensor:
    model.eval()
    with autocast(batch.device, precision):
        probs = [model(view).float().softmax(dim=1) for view in tta_views(batch, tta)]
    return torch.stack(probs).mean(dim=0)


@torch.no_grad()
def collect_probs(model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32",
                  tta: str = "none") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for a whole loader (gathered on the device, copied once)."""
    probs, labels = [], []
    for images, targets, *_ in loader:
        if images is None:
            continue
        probs.append(predict_probs(model, images.to(device, non_blocking=True), precision, tta))
        labels.append(targets)
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).numpy()


def compute_metrics(labels: np.ndarray, probs: np.ndarray, classes: Sequence[str]) -> dict:
    predicted = probs.argmax(axis=1)
    indices = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=indices, zero_division=0
    )
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
    lines = [f"images {metrics['images']}  accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['macro_f1']:.4f}",
             f"{'class':<10}{'precision':>10}{'recall':>8}{'f1':>8}{'support':>9}"]
    for c in classes:
        m = metrics["per_class"][c]
        lines.append(f"{c:<10}{m['precision']:>10.3f}{m['recall']:>8.3f}{m['f1']:>8.3f}{m['support']:>9}")
    lines.append("confusion matrix (rows true, columns predicted): " + json.dumps(metrics["confusion_matrix"]))
    return "\n".join(lines)


def inference_precision(model: nn.Module, cfg: Config, asked: str | None = None) -> str:
    """The precision figures are measured in: the one asked for, else the checkpoint's ``eval_precision`` (fp32 by
    default, so a figure does not depend on the machine's bf16 support); an ONNX file's own (fp32 or int8)."""
    # An ONNX model's precision is fixed in the file; autocast cannot change it.
    return getattr(model, "precision", None) or asked or cfg.eval_precision


def make_loader(dataset: FerDataset, batch_size: int, workers: int, device: torch.device, **kw) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=device.type == "cuda",
                      persistent_workers=False, **kw)


def evaluate_checkpoint(checkpoint: str | os.PathLike | None = None, data: str | None = None, split: str = "report",
                        protocol: str | None = None, tta: str = "none", batch_size: int = 256, workers: int = 4,
                        device: str = "auto", limit_per_class: int = 0, out_dir: str | os.PathLike | None = None,
                        precision: str | None = None) -> dict:
    """Metrics of a checkpoint on a split of any supported dataset, with its own preprocessing.

    ``split`` is ``report`` (PrivateTest under the clean protocol, test/ under spec), ``select`` or ``train``;
    ``checkpoint`` is a ``.pth``, ``.safetensors`` or ``.onnx`` (fp32 or int8) file; ``None`` evaluates
    the model bundled with ferkit. ``precision`` (fp32 or bf16) defaults to the checkpoint's evaluation precision.
    """
    loaded = load_for_inference(checkpoint, device=device)
    cfg, classes = loaded.config, loaded.classes
    splits = load_splits(data if data is not None else cfg.data, protocol or cfg.protocol, limit_per_class)
    check_classes(loaded.source, classes, splits.classes)
    dev = resolve_device(loaded.device)
    precision = inference_precision(loaded.model, cfg, precision)
    model = loaded.model.to(dev)
    dataset = FerDataset(getattr(splits, split), build_test_transform(cfg))
    probs, labels = collect_probs(model, make_loader(dataset, batch_size, workers, dev), dev, precision, tta)
    metrics = compute_metrics(labels, probs, classes)
    metrics.update(split=splits.names.get(split, split), protocol=splits.protocol, tta=tta,
                   checkpoint=str(loaded.source), precision=precision)
    if out_dir is not None:
        stem = f"eval_{metrics['split']}" + ("" if tta == "none" else f"_{tta}")
        write_report(metrics, classes, Path(out_dir), stem,
                     f"{metrics['split']} ({splits.protocol} protocol, TTA {tta}): acc {metrics['accuracy']:.3f}")
    return metrics


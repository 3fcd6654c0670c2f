"""A model file measured on a labelled dataset: what ``ferkit evaluate`` runs."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import check_classes
from ..config import Config
from ..data.datasets import FerDataset, load_splits, make_loader
from ..data.transforms import build_test_transform
from ..evaluation.metrics import compute_metrics, write_report
from ..evaluation.predictions import collect_probs, inference_precision
from ..runtime import resolve_device
from .loading import load_for_inference

SPLITS = ("report", "select", "train")
# No gradients are kept, so a batch several times a training batch fits.
BATCH_SIZE = 256


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | None = None,
    data: str | None = None,
    split: str = "report",
    protocol: str | None = None,
    tta: str = "none",
    batch_size: int = BATCH_SIZE,
    workers: int = Config.workers,
    device: str = "auto",
    limit_per_class: int = 0,
    out_dir: str | os.PathLike | None = None,
    precision: str | None = None,
) -> dict:
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
    metrics.update(
        split=splits.names.get(split, split),
        protocol=splits.protocol,
        tta=tta,
        checkpoint=str(loaded.source),
        precision=precision,
    )
    if out_dir is not None:
        stem = f"eval_{metrics['split']}" + ("" if tta == "none" else f"_{tta}")
        write_report(
            metrics,
            classes,
            Path(out_dir),
            stem,
            f"{metrics['split']} ({splits.protocol} protocol, TTA {tta}): acc {metrics['accuracy']:.3f}",
        )
    return metrics

"""Collections watched while a run trains: folders of class folders (real photos, another dataset) measured every
epoch beside the selection split, recorded and never used to choose best.pth.

FER2013's accuracy does not order models on real photos, and what a run gains on them can fall back while its
selection accuracy still rises (BENCHMARKS.md): only a per-epoch curve shows that, without saving every epoch.
Each folder is decoded and preprocessed once, as inference preprocesses a photo, so an epoch's measurement costs
only the forward passes; its figures equal ``ferkit evaluate`` on that epoch's weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import distributed as dist
from ..config import Config
from ..data.datasets import FerDataset, collate_skipping, is_whole_folder, read_whole_folder
from ..data.loaders import batches_of, make_loader
from ..data.preprocess import build_test_transform
from ..errors import FerkitError
from ..evaluation.metrics import compute_metrics
from ..evaluation.predictions import predict_probs
from ..runtime import Speed

log = logging.getLogger("ferkit")
PREPROCESS_BATCH = 256


@dataclass
class Watched:
    """One watched folder, preprocessed: this process's share of its images and their labels."""

    name: str  # the folder's name, which prefixes its columns in metrics.csv
    images: torch.Tensor  # normalised model inputs [n, 3, S, S] on the CPU, this process's share
    labels: torch.Tensor

    def columns(self) -> tuple[str, str]:
        return tuple(f"{self.name}_{figure}" for figure in FIGURES)


# What each watched folder gets every epoch, as the suffix of its columns in metrics.csv (``<folder>_<figure>``) and
# as train.log words it.
FIGURES = {"acc": "acc", "macro_recall": "macro recall"}


def watched_figure(column: str) -> tuple[str, str] | None:
    """``webfaces-dev_macro_recall`` -> ``("webfaces-dev", "macro_recall")``; None for a column of no folder."""
    for figure in FIGURES:
        if column.endswith(f"_{figure}"):
            return column[: -len(figure) - 1], figure
    return None


def load_watched(cfg: Config, classes: tuple[str, ...], speed: Speed) -> list[Watched]:
    """Every ``cfg.watch`` folder read and preprocessed once; a folder that is not a folder of class folders, or
    two folders of one name, stop the run before its first epoch."""
    names = [Path(p).name for p in cfg.watch]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise FerkitError(
            "--watch folders must have different names, which head their columns in metrics.csv; "
            f"{', '.join(repeated)} is given twice"
        )
    return [_load_one(Path(path), cfg, classes, speed) for path in cfg.watch]


def _load_one(root: Path, cfg: Config, classes: tuple[str, ...], speed: Speed) -> Watched:
    if not is_whole_folder(root):
        raise FerkitError(
            f"--watch {root}: not a folder of class folders with no train/test split; give one such as "
            "webfaces-dev or ckplus48, with one folder per class (angry, happy, ...)"
        )
    samples, left_out = read_whole_folder(root, classes)
    for line in left_out:
        log.info(f"--watch {line}")
    share = samples[dist.rank() :: dist.world_size()]
    dataset = FerDataset(share, build_test_transform(cfg), cfg.bad_images == "skip")
    loader = make_loader(dataset, PREPROCESS_BATCH, speed.workers, torch.device("cpu"), collate_fn=collate_skipping)
    images, labels, skipped = [], [], []
    for batch, targets, bad in batches_of(loader):
        skipped += bad
        if batch is not None:
            images.append(batch)
            labels.append(targets)
    if skipped:
        log.warning(f"--watch {root}: unreadable images left out (--bad-images skip): {', '.join(skipped)}")
    log.info(f"watching {root} ({len(samples)} images) every epoch; it does not choose best.pth")
    # Empty starts: a process may hold no image (more processes than images, or none readable).
    images.insert(0, torch.empty(0, 3, cfg.image_size, cfg.image_size))
    labels.insert(0, torch.empty(0, dtype=torch.int64))
    return Watched(root.name, torch.cat(images), torch.cat(labels))


@torch.no_grad()
def measure_watched(
    model: nn.Module, watched: list[Watched], classes: tuple[str, ...], cfg: Config, speed: Speed
) -> dict[str, float]:
    """Accuracy and macro recall (over the classes with at least ``cfg.watch_min_support`` images) of each
    watched folder, as metrics.csv's columns; every process predicts its own share."""
    row: dict[str, float] = {}
    size = cfg.batch_size * cfg.eval_batch_factor
    for w in watched:
        probs = [torch.zeros(0, len(classes))] + [
            predict_probs(model, w.images[i : i + size].to(speed.device), cfg.eval_precision).cpu()
            for i in range(0, len(w.images), size)
        ]
        shares = dist.gather((torch.cat(probs).numpy(), w.labels.numpy()))
        probs_all = np.concatenate([p for p, _ in shares])
        labels_all = np.concatenate([y for _, y in shares])
        metrics = compute_metrics(labels_all, probs_all, classes, cfg.watch_min_support)
        accuracy, recall = w.columns()
        row[accuracy], row[recall] = metrics["accuracy"], metrics["macro_recall"]
    return row

"""The run folder: preparing it, reading last.pth back, ``train.log``, each epoch's records, and the checkpoints.

Only the main process writes here; under torchrun the others log nothing and save nothing.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .. import distributed as dist
from ..checkpoint import BEST, LAST, atomic_save, make_checkpoint, read_checkpoint, update_record
from ..config import Config
from ..errors import FerkitError
from ..plots import plot_curves
from .watch import FIGURES, watched_figure

log = logging.getLogger("ferkit")
CONFIG = "config.json"
LOG = "train.log"
# Drawing curves.png takes about half a second: every epoch of a run whose epochs take seconds (a GPU, a small
# model) would add a tenth or more to its time. Epochs further apart than this are all drawn.
CURVES_EVERY_S = 30.0
METRIC_FIELDS = [
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "select_loss",
    "select_acc",
    "select_macro_f1",
    "images_per_s",
    "epoch_seconds",
    "gflop_per_image",
    "pflop",
    "best",
]


def is_watched(column: str) -> bool:
    """Whether a history column is a --watch folder's figure (``<folder>_acc``, ``<folder>_macro_recall``)."""
    return column not in METRIC_FIELDS


def watched_label(column: str) -> str:
    """``webfaces-dev_macro_recall`` as train.log says it: ``webfaces-dev macro recall``."""
    folder, figure = watched_figure(column)
    return f"{folder} {FIGURES[figure]}"


def _watched_accuracies(history: list[dict]) -> dict[str, str]:
    """Each watched folder's accuracy column in ``history``, by folder: what curves.png draws beside training's."""
    accuracies = {}
    for column in dict.fromkeys(k for r in history for k in r if is_watched(k)):
        folder, figure = watched_figure(column)
        if figure == "acc":
            accuracies[folder] = column
    return accuracies


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    # Every process checks, so that all of them stop with the error, before the main one changes anything.
    if out.exists() and not out.is_dir():
        raise FerkitError(f"--out {out} is a file, not a run folder; choose another --out")
    held = not resume and holds_run(out)
    if held and not overwrite:
        raise FerkitError(
            f"run folder {out} already holds a run; resume it with --resume, "
            "choose another --out, or pass --overwrite to replace it"
        )
    dist.barrier()
    if not dist.is_main():
        return
    if resume:
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing a checkpoint
            stale.unlink()
        return
    if held:
        shutil.rmtree(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FerkitError(f"cannot make the run folder {out}: {e.strerror or e}; choose another --out") from None


def holds_run(out: Path) -> bool:
    """Whether ``out`` has anything but what a start writes before its first step, its log and config: a start
    that stopped there (wrong data, a batch too large) leaves nothing to resume, and the corrected command reuses
    the folder, its log growing on. Without the log, a lone config.json is the user's, not a start's."""
    names = {p.name for p in out.iterdir()} if out.exists() else set()
    return bool(names) and not (LOG in names and names <= {CONFIG, LOG})


def log_stop(error: Exception) -> None:
    """The error that stopped the run whose log is set up, in its train.log alone (the command line prints it
    already): a corrected command that reuses the folder leaves a log telling both starts."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, f"stopped: {error}", None, None)
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def read_last(out: str | Path) -> dict:
    """A run folder's last.pth, read and checked: everything ``--resume`` continues from, its config included."""
    last = Path(out) / LAST
    if not last.is_file():
        raise FerkitError(f"cannot resume: {last} does not exist; start the run without --resume")
    return read_checkpoint(last)


@contextlib.contextmanager
def run_logging(out: Path) -> Iterator[None]:
    """ferkit's messages into the run's train.log and onto stdout while the run lasts; then as they were, so that a
    later call in the same process (a prediction's warnings, a second run) does not write into this run's log."""
    before = log.level, log.propagate, list(log.handlers)
    for h in before[2]:
        log.removeHandler(h)
    log.setLevel(logging.INFO)
    log.propagate = False
    if dist.is_main():  # the main process reports for all (what it needs from the others is gathered)
        file_handler = logging.FileHandler(out / LOG)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(file_handler)
        log.addHandler(logging.StreamHandler(sys.stdout))
    else:
        log.addHandler(logging.NullHandler())
    try:
        yield
    finally:
        for h in list(log.handlers):
            log.removeHandler(h)
            h.close()
        level, propagate, handlers = before
        log.setLevel(level)
        log.propagate = propagate
        for h in handlers:
            log.addHandler(h)


@dataclass
class Checkpoints:
    """Writes a run's checkpoints, atomically and from the main process only; the loop decides when.

    last.pth holds everything a resume needs; best.pth the evaluated weights (the average, with --ema-decay) and
    the epoch and metrics they were chosen on.
    """

    out: Path
    cfg: Config
    classes: tuple[str, ...]
    select_split: str
    class_counts: dict[str, int]  # the training split's, which the model's probabilities carry (evaluation.prior)

    def save_best(self, evaluated: nn.Module, epoch: int, metrics: dict, pflop: float | None) -> None:
        record = {k: metrics[k] for k in ("accuracy", "macro_f1")}
        cost = {"pflop": pflop} if pflop is not None else {}
        self._save(BEST, evaluated, epoch=epoch, select_split=self.select_split, metrics=record, **cost)

    def record_cost(self, pflop: float | None) -> None:
        """best.pth's ``pflop`` made the whole run's (it was the run's so far when the file was written)."""
        if pflop is not None and dist.is_main():
            update_record(self.out / BEST, {"pflop": pflop})

    def save_last(
        self,
        model: nn.Module,
        *,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        ema: AveragedModel | None,
        state: dict,
        rng: dict,
    ) -> None:
        averaged = {"ema": ema.state_dict()} if ema is not None else {}
        self._save(
            LAST,
            model,
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            state=state,
            rng=rng,
            **averaged,
        )

    def _save(self, name: str, weights: nn.Module, **extra: Any) -> None:
        if dist.is_main():
            checkpoint = make_checkpoint(weights, self.cfg, self.classes, class_counts=self.class_counts, **extra)
            atomic_save(checkpoint, self.out / name)


class EpochRecords:
    """Each finished epoch in metrics.csv, TensorBoard (--tensorboard) and a line of train.log; curves.png at most
    every ``CURVES_EVERY_S`` seconds, after the last epoch and when the run stops (:meth:`close`)."""

    def __init__(self, out: Path, cfg: Config) -> None:
        self.out, self.epochs = out, cfg.epochs
        self.writer = _tensorboard(out) if cfg.tensorboard and dist.is_main() else None
        self._undrawn: list[dict] | None = None
        self._drawn_at = time.monotonic()

    def write(self, history: list[dict], select_label: str) -> None:
        if not dist.is_main():
            return
        # Written whole from the history each epoch: a resumed run's file is always complete and has one header,
        # even when it was started by a version of ferkit that recorded fewer columns.
        # A --watch folder added on --resume gets its column, empty in the epochs before it.
        watched = list(dict.fromkeys(k for r in history for k in r if is_watched(k)))
        with open(self.out / "metrics.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_FIELDS + watched, restval="")
            w.writeheader()
            w.writerows(history)
        row = history[-1]
        if self.writer is not None:
            for key in METRIC_FIELDS[1:-1] + [k for k in row if is_watched(k)]:
                self.writer.add_scalar(key, row[key], row["epoch"])
            self.writer.flush()
        log.info(
            f"epoch {row['epoch']}/{self.epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
            f"acc {row['train_acc']:.4f}  {select_label} loss {row['select_loss']:.4f} "
            f"acc {row['select_acc']:.4f} F1 {row['select_macro_f1']:.4f}  {row['images_per_s']:.1f} img/s  "
            f"{row['epoch_seconds']:.0f}s  {row['pflop']:.3f} PFLOP"
            + "".join(f"  {watched_label(k)} {v:.4f}" for k, v in row.items() if is_watched(k))
            + ("  (best, saved best.pth)" if row["best"] else "")
        )
        self._undrawn = history
        if row["epoch"] >= self.epochs or time.monotonic() - self._drawn_at >= CURVES_EVERY_S:
            self.draw()

    def draw(self) -> None:
        """Bring curves.png up to the last recorded epoch."""
        if self._undrawn and dist.is_main():
            plot_curves(self._undrawn, self.out / "curves.png", _watched_accuracies(self._undrawn))
            self._undrawn, self._drawn_at = None, time.monotonic()

    def close(self) -> None:
        self.draw()
        if self.writer is not None:
            self.writer.close()


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))

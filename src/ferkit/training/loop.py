"""The specification's training loop (docs/recipe.md, section 3) with what users expect around it.

Per epoch: ``model.train()``, an AdamW step per batch on label-smoothed cross-entropy (with ``--sam-rho``, on
the gradient of a second, sharpness-aware pass), then ``model.eval()`` under ``no_grad`` on the selection split,
one cosine ``scheduler.step()``, metrics to CSV/TensorBoard/PNG, ``last.pth`` always and ``best.pth`` only on
improvement (both atomic).

The loop is :func:`_fit` and :func:`_train_epoch`, and it alone changes the run's :class:`TrainState` (the
history, and with it the best epoch); around it, :mod:`.feed` delivers the batches (sampler, pipelines,
seeds), :mod:`.optim` holds the optimizer and learning-rate schedule, :mod:`.rundir` the run folder, its
records and the checkpoint writer, :mod:`.signals` the stop signals, and
:func:`ferkit.config.resumed_config` decides what a resumed run may change.

Under torchrun every process runs this same loop on its share of each global batch, with
DistributedDataParallel averaging the gradients; the processes agree on every branch that
surrounds a collective (skipped batches, non-finite steps, Ctrl-C), and only the main process
writes the run folder.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from .. import distributed as dist
from ..checkpoint import BEST, LAST, check_classes, load_model
from ..config import Config, resumed_config
from ..data.datasets import FerDataset, Sample, Splits, collate_skipping, load_splits, resolve_data_path
from ..data.loaders import make_loader
from ..data.preprocess import build_test_transform
from ..errors import FerkitError
from ..evaluation.metrics import compute_metrics, format_metrics, write_report
from ..evaluation.predictions import collect_probs
from ..evaluation.prior import balanced_weights, carried_counts, class_counts
from ..model import build_model, count_parameters, training_flops
from ..runtime import Speed, autocast, machine_description, seed_everything
from .distill import soft_targets
from .feed import TrainBatches, open_batches, restore_rng, rng_state
from .finetune import initialise_from
from .optim import build_optimizer, build_scheduler, continue_schedule, sharpness_aware_gradient
from .rundir import (
    CONFIG,
    Checkpoints,
    EpochRecords,
    is_watched,
    log_stop,
    prepare_run_dir,
    read_last,
    run_logging,
    watched_label,
)
from .signals import agreed_stop, stop_requests
from .watch import Watched, load_watched, measure_watched

log = logging.getLogger("ferkit")


class TrainingInterrupted(FerkitError):
    pass


@dataclass
class TrainState:
    """A run's progress, kept by the loop alone; saved whole in last.pth (as ``state``) and read back on --resume."""

    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the epoch in progress (non-zero only after an interruption)
    seconds: float = 0.0
    pflop: float = 0.0  # training compute spent so far (forward + backward FLOPs of every image trained on)
    start_pflop: float | None = 0.0  # the --init-from weights' own, as their file records it (None: it does not)
    history: list[dict] = field(default_factory=list)  # metrics.csv's rows, each flagged ``best`` or not
    partial: dict = field(default_factory=dict)  # running sums of the interrupted epoch
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (--bad-images skip)
    nonfinite_steps: list[str] = field(default_factory=list)  # "epoch:step" of steps skipped (--nonfinite skip)

    def improves(self, accuracy: float) -> bool:
        """Whether best.pth should take this selection accuracy: it beats every earlier epoch's (the first always)."""
        return accuracy > max((row["select_acc"] for row in self.history), default=-1.0)

    def best_epoch(self) -> int:
        return max((row["epoch"] for row in self.history if row["best"]), default=0)

    @property
    def weights_pflop(self) -> float | None:
        """The training compute behind the run's weights so far: its own and its start's; None when that is unknown."""
        return None if self.start_pflop is None else self.start_pflop + self.pflop


@dataclass
class Training:
    """One run's live objects, built by :func:`_start`; the loop and its steps find them here."""

    cfg: Config
    splits: Splits
    speed: Speed
    model: nn.Module  # the weights checkpoints hold, without DDP or compile wrappers
    train_model: nn.Module  # ``model`` as the steps call it (under DDP, torch.compile)
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: LambdaLR
    batches: TrainBatches
    steps_per_epoch: int
    gflop_per_image: float
    state: TrainState
    checkpoints: Checkpoints
    records: EpochRecords
    watched: list[Watched]  # --watch folders, measured every epoch beside the selection split
    loss_weight: torch.Tensor | None = None  # each class's weight in the loss (--class-weights)

    @property
    def evaluated(self) -> nn.Module:
        """What evaluation and best.pth see: the weight average with --ema-decay, else ``model``."""
        return self.ema.module if self.ema is not None else self.model


def train(
    cfg: Config, resume: bool = False, overwrite: bool = False, last: dict | None = None, command: str | None = None
) -> dict:
    """Run (or resume) training; returns the final report. Everything lands in ``cfg.out``.

    With ``resume``, ``cfg`` continues the run in ``cfg.out``: it may differ from the run's saved config only as
    :func:`~ferkit.config.resumed_config` allows (speed and input/output settings, the epoch count). ``last`` is
    that run's last.pth when the caller has read it already (:func:`~ferkit.training.rundir.read_last`; the CLI
    does, for the saved config), so that a resume reads the file once. ``command``, the command line that started
    this call, heads its part of train.log, so that a run continued over several sittings keeps how it began.
    Launched by torchrun, every process calls this, and together they train one model.
    """
    with dist.process_group():
        out = Path(cfg.out)
        ckpt = (last or read_last(out)) if resume else None
        prepare_run_dir(out, resume, overwrite)
        with run_logging(out):
            try:
                return _fit(_start(cfg, ckpt, command))
            except TrainingInterrupted:
                raise
            except FerkitError as e:
                log_stop(e)
                raise


def _fit(t: Training) -> dict:
    """Train an epoch, measure it on the selection split, record and checkpoint it; then report on best.pth."""
    cfg, state = t.cfg, t.state
    if cfg.init_from and not state.history and not state.step:
        _measure_start(t)
    with stop_requests() as stop:
        while state.epoch < cfg.epochs:
            t0, skipped_before = time.perf_counter(), len(state.skipped)
            with _suggest_smaller_batch(t.speed.device, cfg.batch_size, cfg.image_size):
                sums = _train_epoch(t, stop)
            _gather_skipped(state, skipped_before)
            state.seconds += time.perf_counter() - t0
            if signum := agreed_stop(stop):
                _save_and_stop(t, signum, sums)
            if sums["seen"] == 0:
                raise FerkitError(
                    f"no batch of epoch {state.epoch + 1} could be trained on (every image "
                    "unreadable, or batches of one image); check the data or raise --batch-size"
                )
            if cfg.schedule_unit == "epoch":
                t.scheduler.step()
            dist.broadcast_buffers(t.evaluated)
            metrics = _measure(t.evaluated, t.splits.select, t.splits.classes, cfg, t.speed)
            watched = measure_watched(t.evaluated, t.watched, t.splits.classes, cfg, t.speed)
            improved = state.improves(metrics["accuracy"])
            state.epoch, state.step, state.partial = state.epoch + 1, 0, {}
            state.pflop += t.gflop_per_image * sums["seen"] / 1e6
            lr, seconds = t.optimizer.param_groups[0]["lr"], time.perf_counter() - t0
            row = _epoch_row(state, lr, sums, metrics, seconds, t.gflop_per_image, improved)
            state.history.append({**row, **watched})
            if improved:
                t.checkpoints.save_best(t.evaluated, state.epoch, metrics, state.weights_pflop)
            _save_last(t)
            t.records.write(state.history, f"{t.splits.names['select']} ({metrics['images']} images)")
            if state.skipped:
                log.info(f"{len(state.skipped)} unreadable images skipped so far (listed above in train.log)")
    t.records.close()
    # Choosing best.pth took every epoch of the schedule, those after it too: its record says what the run cost.
    t.checkpoints.record_cost(state.weights_pflop)
    dist.barrier()  # the report reads best.pth: every process waits until the main one has written it
    return final_report(cfg, t.splits, state, t.speed)


def _measure_start(t: Training) -> None:
    """The network a fine-tuning run starts from, measured as every epoch is: what its epochs must beat."""
    metrics = _measure(t.evaluated, t.splits.select, t.splits.classes, t.cfg, t.speed)
    watched = measure_watched(t.evaluated, t.watched, t.splits.classes, t.cfg, t.speed)
    log.info(
        f"init: before training, {t.splits.names['select']} acc {metrics['accuracy']:.4f} F1 {metrics['macro_f1']:.4f}"
        + "".join(f"  {watched_label(column)} {value:.4f}" for column, value in watched.items())
    )


def _train_epoch(t: Training, stop: list[int]) -> dict:
    """Train on the epoch's remaining batches; returns the epoch's sums over all processes."""
    state = t.state
    t.batches.set_epoch(state.epoch, state.step)
    t.train_model.train()
    sums = _RunningSums(state.partial, t.speed.device)
    # Closing the bar on any exit keeps error messages on a line of their own.
    with _progress_bar(t.steps_per_epoch, state.step, f"epoch {state.epoch + 1}/{t.cfg.epochs}") as bar:
        for images, targets, bad in t.batches:
            state.step += 1
            bar.update(1)
            if bad:
                state.skipped.extend(bad)
                log.warning(f"skipped unreadable images (--bad-images skip): {', '.join(bad)}")
            # BatchNorm needs two samples to train on; DDP needs every process in every step, so all skip together.
            if dist.all_ranks(images is not None and len(targets) > 1):
                _train_step(t, images, targets, sums)
            if t.cfg.schedule_unit == "step":
                t.scheduler.step()
            if state.step % t.cfg.log_interval == 0 or state.step == t.steps_per_epoch:
                _check_progress(sums, bar, state)
            if agreed_stop(stop):
                break
    return sums.over_ranks()


def _train_step(t: Training, images: torch.Tensor, targets: torch.Tensor, sums: _RunningSums) -> None:
    """One optimizer step and the weight average's update; under --nonfinite skip, a step whose loss is not finite
    in some process is counted and changes nothing."""

    def forward() -> tuple[torch.Tensor, torch.Tensor]:
        with autocast(t.speed.device, t.speed.precision):
            logits = t.train_model(images)
            loss = F.cross_entropy(logits.float(), targets, weight=t.loss_weight, label_smoothing=t.cfg.label_smoothing)
            return logits, loss

    logits, loss = forward()
    if _skips_nonfinite(t, loss):
        return
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if t.cfg.sam_rho:
        worst = sharpness_aware_gradient(t.model, t.cfg.sam_rho, lambda: _backward(forward()[1]))
        if _skips_nonfinite(t, worst, " at SAM's second pass"):
            return
    t.optimizer.step()
    if t.ema is not None:
        t.ema.update_parameters(t.model)
    labels = targets.argmax(dim=1) if targets.ndim == 2 else targets  # mixed batches: their larger part
    sums.add(loss.detach(), (logits.argmax(dim=1) == labels).sum(), len(targets))


def _backward(loss: torch.Tensor) -> torch.Tensor:
    loss.backward()
    return loss


def _skips_nonfinite(t: Training, loss: torch.Tensor, where: str = "") -> bool:
    """Under --nonfinite skip, whether this step is skipped because ``loss`` is not finite in some process."""
    if t.cfg.nonfinite != "skip" or dist.all_ranks(bool(torch.isfinite(loss))):
        return False
    t.state.nonfinite_steps.append(f"{t.state.epoch + 1}:{t.state.step}")
    log.warning(
        f"skipped step {t.state.step} of epoch {t.state.epoch + 1}: non-finite loss{where} "
        f"({len(t.state.nonfinite_steps)} skipped so far)"
    )
    return True


class _RunningSums:
    """An epoch's loss and accuracy sums so far, from where an interrupted epoch left them (``partial``).

    They stay on the device: reading them every step would synchronise the GPU each batch.
    """

    def __init__(self, partial: dict, device: torch.device) -> None:
        self.loss = torch.tensor(partial.get("loss", 0.0), device=device)
        self.correct = torch.tensor(partial.get("correct", 0), device=device)
        self.seen = partial.get("seen", 0)
        self.timed, self.t0 = 0, time.perf_counter()  # images since this process started the epoch, for img/s

    def add(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> None:
        self.loss += loss * images
        self.correct += correct
        self.seen += images
        self.timed += images

    def over_ranks(self) -> dict:
        loss, correct, seen, timed = dist.sum_over_ranks([float(self.loss), float(self.correct), self.seen, self.timed])
        return {
            "loss": loss,
            "correct": int(correct),
            "seen": int(seen),
            "images_per_s": timed / max(time.perf_counter() - self.t0, 1e-9),
        }


def _check_progress(sums: _RunningSums, bar: tqdm, state: TrainState) -> None:
    # Checked where the progress bar synchronises anyway; checkpoints are only written after this check passes at
    # the epoch's end, so a diverged model never overwrites a good one.
    so_far = sums.over_ranks()
    if not math.isfinite(so_far["loss"]):
        raise FerkitError(
            f"non-finite loss at epoch {state.epoch + 1} step {state.step}; the last good "
            "checkpoint is kept; lower --lr or check the data, then --resume (or --nonfinite skip)"
        )
    if so_far["seen"]:
        bar.set_postfix(
            loss=f"{so_far['loss'] / so_far['seen']:.3f}",
            acc=f"{so_far['correct'] / so_far['seen']:.3f}",
            img_s=f"{so_far['images_per_s']:.1f}",
        )


def _progress_bar(total: int, initial: int, desc: str) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        leave=False,
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
        disable=not dist.is_main(),
    )


def _measure(model: nn.Module, samples: list[Sample], classes: tuple[str, ...], cfg: Config, speed: Speed) -> dict:
    """Metrics over all of ``samples``, each image counted once: every process predicts its own unpadded share."""
    dataset = FerDataset(samples[dist.rank() :: dist.world_size()], build_test_transform(cfg), cfg.bad_images == "skip")
    loader = make_loader(
        dataset,
        dist.local_batch_size(cfg.batch_size) * cfg.eval_batch_factor,
        speed.workers,
        speed.device,
        collate_fn=collate_skipping,
    )
    shares = dist.gather(collect_probs(model, loader, speed.device, cfg.eval_precision))
    probs, labels = np.concatenate([p for p, _ in shares]), np.concatenate([y for _, y in shares])
    return compute_metrics(labels, probs, classes)


def _epoch_row(
    state: TrainState, lr: float, sums: dict, metrics: dict, seconds: float, gflop_per_image: float, best: bool
) -> dict:
    """The finished epoch's line of metrics.csv."""
    return {
        "epoch": state.epoch,
        "lr": lr,
        "train_loss": sums["loss"] / sums["seen"],
        "train_acc": sums["correct"] / sums["seen"],
        "select_loss": metrics["loss"],
        "select_acc": metrics["accuracy"],
        "select_macro_f1": metrics["macro_f1"],
        "images_per_s": sums["images_per_s"],
        "epoch_seconds": seconds,
        "gflop_per_image": gflop_per_image,
        "pflop": state.pflop,
        "best": best,
    }


def _save_last(t: Training, rng: dict | None = None) -> None:
    """last.pth; ``rng``: the generators of a run stopped part-way through an epoch."""
    t.checkpoints.save_last(
        t.model, optimizer=t.optimizer, scheduler=t.scheduler, ema=t.ema, state=vars(t.state), rng=rng or {}
    )


def _save_and_stop(t: Training, signum: int, sums: dict) -> NoReturn:
    t.state.partial = sums
    _save_last(t, rng_state())
    t.records.close()
    out = t.checkpoints.out
    again = f"ferkit train --resume {out}" if dist.world_size() == 1 else f"the same launch command with --resume {out}"
    raise TrainingInterrupted(
        f"interrupted by {signal.Signals(signum).name} at epoch {t.state.epoch + 1} step "
        f"{t.state.step}; state saved to {out}/last.pth; continue with: {again}"
    )


@contextmanager
def _suggest_smaller_batch(device: torch.device, batch_size: int, image_size: int) -> Iterator[None]:
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        raise FerkitError(
            f"out of memory on {device} with batch size {batch_size}{_per_process(batch_size)} "
            f"at {image_size}x{image_size}; retry with a smaller --batch-size (the learning "
            "rate is rescaled for it)"
        ) from None


def _per_process(batch_size: int) -> str:
    if dist.world_size() == 1:
        return ""
    return f" ({dist.local_batch_size(batch_size)} per process x {dist.world_size()} processes)"


def _gather_skipped(state: TrainState, since: int) -> None:
    """Put the unreadable images every process met after ``since`` in the list the main process logs and saves."""
    per_process = dist.gather(state.skipped[since:])
    others = [name for r, names in enumerate(per_process) if r != dist.rank() for name in names]
    if others:
        log.warning(f"skipped unreadable images in other processes (--bad-images skip): {', '.join(others)}")
    state.skipped[since:] = [name for names in per_process for name in names]


def _start(cfg: Config, ckpt: dict | None, command: str | None) -> Training:
    """A run ready to train in its prepared folder: its config decided, its objects new or as ``ckpt`` (last.pth)
    left them."""
    out = Path(cfg.out)
    state = TrainState(**ckpt["state"]) if ckpt else TrainState()
    if ckpt and ckpt["config"].get("init_from") and "start_pflop" not in ckpt["state"]:
        state.start_pflop = None  # begun by a ferkit that did not read its start's compute
    saved = Config.from_dict(ckpt["config"]) if ckpt else cfg  # a new run has nothing to differ from
    cfg, changes = resumed_config(saved, cfg, state.epoch + bool(state.step), str(out))
    if command:
        log.info(f"command: {command}")
    if dist.is_main():
        (out / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    splits = load_splits(cfg.data, cfg.protocol, cfg.limit_per_class)
    if ckpt is not None:
        check_classes(out / LAST, tuple(ckpt["classes"]), splits.classes)
    t = _assemble(cfg, splits, state, ckpt)
    if not dist.is_main():
        state.partial = {}  # the interrupted epoch's sums are totals over all processes: one carries them on
    if state.step:
        restore_rng(ckpt["rng"])
    _log_start(t)
    if ckpt is not None:
        log.info(
            f"resumed at epoch {state.epoch + 1} step {state.step}"
            + (f" with {', '.join(changes)}" if changes else " with the saved config")
        )
    if cfg.epochs != saved.epochs:
        log.info(continue_schedule(t.scheduler, cfg, saved.epochs))
    unrecorded = [name for name in t.batches.skipped if name not in state.skipped]  # a resumed run has them
    if unrecorded:
        state.skipped += unrecorded
        log.warning(f"skipped unreadable images (--bad-images skip): {', '.join(unrecorded)}")
    return t


def _check_one_batch(images: int, cfg: Config) -> None:
    if images < cfg.batch_size:
        raise FerkitError(f"{images} training images are fewer than one batch of {cfg.batch_size}; lower --batch-size")


def _assemble(cfg: Config, splits: Splits, state: TrainState, ckpt: dict | None) -> Training:
    """The model, optimizer, schedule, weight average and batches of a run; with ``ckpt``, as it left them."""
    speed = Speed.resolve(cfg)
    watched = load_watched(cfg, splits.classes, speed)  # before the teachers' labelling: a wrong folder stops at once
    seed_everything(cfg.seed)
    model = build_model(cfg, len(splits.classes))
    if cfg.init_from and ckpt is None:
        state.start_pflop = initialise_from(model, cfg, splits.classes)
    # Before SyncBatchNorm, whose probe would sync; SAM passes every image through forward and backward twice.
    gflop_per_image = training_flops(model, cfg.image_size) / 1e9 * (2 if cfg.sam_rho else 1)
    if cfg.sync_bn:
        model = dist.convert_sync_batchnorm(model, speed.device)
    model = model.to(speed.device, memory_format=speed.memory_format)
    optimizer = build_optimizer(model, cfg)
    # The average's weights are what evaluation, best.pth and the report see; training steps the raw weights.
    ema = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay
        else None
    )
    _check_one_batch(len(splits.train), cfg)  # before the teachers spend minutes labelling them
    taught = soft_targets(splits.train, splits.classes, cfg, speed, resume=ckpt is not None)
    if taught is not None and ckpt is None:
        state.pflop += taught[1]  # the teachers' labelling is part of what this run spends
    batches = open_batches(
        splits.train, cfg, speed, dist.local_batch_size(cfg.batch_size), taught[0] if taught is not None else None
    )
    _check_one_batch(batches.size, cfg)  # again without the unreadable images skipped
    steps_per_epoch = batches.size // cfg.batch_size
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
    # DDP first, then compile: PyTorch's guidance, so that the compiler splits the graph at DDP's gradient buckets.
    train_model = dist.wrap(model, speed.device)
    if cfg.compile:
        train_model = torch.compile(train_model)
    out = Path(cfg.out)
    counts = class_counts([s.label for s in splits.train], splits.classes)
    weights = balanced_weights(counts) if cfg.class_weights == "balanced" else None
    return Training(
        cfg=cfg,
        splits=splits,
        speed=speed,
        model=model,
        train_model=train_model,
        ema=ema,
        optimizer=optimizer,
        scheduler=scheduler,
        batches=batches,
        steps_per_epoch=steps_per_epoch,
        gflop_per_image=gflop_per_image,
        state=state,
        checkpoints=Checkpoints(
            out, cfg, splits.classes, splits.names["select"], carried_counts(counts, cfg.class_weights)
        ),
        records=EpochRecords(out, cfg),
        watched=watched,
        loss_weight=None if weights is None else torch.tensor(weights, dtype=torch.float32, device=speed.device),
    )


def _with_start(state: TrainState) -> str:
    if state.weights_pflop is None:
        return "; the start's file does not record its training compute, so best.pth records none"
    return f"; {state.weights_pflop:.3f} PFLOP with the start's ({state.start_pflop:.3f}), as best.pth records"


def _log_start(t: Training) -> None:
    cfg, speed, splits = t.cfg, t.speed, t.splits
    log.info(
        f"ferkit train: {cfg.arch} ({count_parameters(t.model) / 1e6:.2f}M parameters) at "
        f"{cfg.image_size}x{cfg.image_size}, {cfg.epochs} epochs, "
        f"batch {cfg.batch_size}{_per_process(cfg.batch_size)}, "
        f"lr {cfg.effective_lr():.2e} ({cfg.lr_scaling} scaling of {cfg.lr:.2e} for batch 32), "
        f"device {speed.device}"
    )
    log.info(
        f"data: {len(splits.train)} train, {len(splits.select)} {splits.names['select']} (selection), "
        f"{len(splits.report)} {splits.names['report']} (report); protocol {cfg.protocol}; "
        f"run folder {t.checkpoints.out}"
    )
    log.info(
        f"speed: {t.batches.description()}; {speed.precision} training precision, {cfg.eval_precision} "
        f"evaluation; {'channels_last' if speed.channels_last else 'contiguous'} memory layout; "
        f"torch.compile {'on' if cfg.compile else 'off'}"
    )
    if speed.workers < cfg.workers:
        # In place of PyTorch's warning, which each loader would print: more workers than cores only compete.
        log.info(f"workers: --workers {cfg.workers} lowered to {speed.workers}, the cores this process may use")
    epoch_pflop = t.gflop_per_image * t.steps_per_epoch * cfg.batch_size / 1e6
    log.info(
        f"compute: {t.gflop_per_image:.3f} GFLOP per training image "
        f"({'forward + backward, twice: SAM' if cfg.sam_rho else 'forward + backward'}), {epoch_pflop:.4f} "
        f"PFLOP an epoch, {epoch_pflop * cfg.epochs:.3f} PFLOP for {cfg.epochs} epochs; machine: "
        f"{machine_description()}"
    )


def final_report(cfg: Config, splits: Splits, state: TrainState, speed: Speed) -> dict:
    """Measure best.pth once on the report split (PrivateTest under the clean protocol), with the run's cost; with
    ``cfg.report`` off the split stays unread and the cost alone is returned."""
    best = Path(cfg.out) / BEST
    best_epoch = state.best_epoch()
    # best.pth holds that epoch's evaluated weights, so its row already measured them on the watched folders.
    watched = {k: v for row in state.history if row["epoch"] == best_epoch for k, v in row.items() if is_watched(k)}
    run = dict(
        protocol=cfg.protocol,
        split=splits.names["report"] if cfg.report else None,
        selected_on=splits.names["select"],
        best_epoch=best_epoch,
        epochs=cfg.epochs,
        train_minutes=round(state.seconds / 60, 2),
        pflop=state.pflop,
        **({"start_pflop": state.start_pflop} if cfg.init_from else {}),
        gflop_per_image=state.history[-1].get("gflop_per_image") if state.history else None,
        precision=cfg.eval_precision,
        train_precision=speed.precision,
        machine=machine_description(),
        checkpoint=str(best),
        watched=watched,
    )
    chosen = f"best.pth from epoch {best_epoch} (selected on {run['selected_on']})"
    tail = "".join(f"\n{name} (watched, best epoch): {value:.4f}" for name, value in watched.items()) + (
        f"\ncost: {state.pflop:.3f} PFLOP of training, {state.seconds / 60:.1f} min wall "
        f"({speed.precision} training) on {machine_description()}" + (_with_start(state) if cfg.init_from else "")
    )
    if not cfg.report:
        log.info(
            f"report: {splits.names['report']} left unread (--no-report), {chosen}; once this run is the one "
            f"chosen, read it with `ferkit evaluate {best} --data {resolve_data_path(cfg.data)} --split report`" + tail
        )
        return run
    model = load_model(best, splits.classes).model.to(speed.device)
    metrics = {**_measure(model, splits.report, splits.classes, cfg, speed), **run}
    if dist.is_main():
        write_report(
            metrics,
            splits.classes,
            best.parent,
            "report",
            f"{metrics['split']} ({cfg.protocol} protocol), best epoch {best_epoch}: acc {metrics['accuracy']:.3f}",
        )
    log.info(
        f"report: {metrics['split']} with {chosen}, {cfg.eval_precision} evaluation\n"
        + format_metrics(metrics, splits.classes)
        + tail
    )
    return metrics

"""The specification's training loop (SPEC.md section 3) with what users expect around it.

Per epoch: ``model.train()``, an AdamW step per batch on label-smoothed cross-entropy, then
``model.eval()`` under ``no_grad`` on the selection split, one cosine ``scheduler.step()``, metrics
to CSV/TensorBoard/PNG, ``last.pth`` always and ``best.pth`` only on improvement (both atomic).

Data order and augmentation randomness depend only on (seed, epoch) (and the step, in the batched
pipeline), so ``--resume`` replays the rest of a run exactly as an uninterrupted one would have run it.

Two pipelines feed the loop (``--data-pipeline``): DataLoader workers that decode and augment image
by image (torchvision, the reference), or the split decoded once and augmented a batch at a time on
the training device (:mod:`ferkit.fastdata`). Both deliver the same sampler's batches on the device,
so everything after them, from the loss to the checkpoints, is one code path.

Under torchrun every process runs this same loop on its share of each global batch, with
DistributedDataParallel averaging the gradients; the processes agree on every branch that
surrounds a collective (skipped batches, non-finite steps, Ctrl-C), and only the main process
writes the run folder.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torch.utils.data import Sampler
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import atomic_save, check_classes, load_model, make_checkpoint, read_checkpoint
from .config import Config
from .data import FerDataset, Sample, Splits, collate_skipping, load_splits
from .errors import FerkitError
from .evaluate import collect_probs, compute_metrics, format_metrics, make_loader, write_report
from .fastdata import BatchAugment, DecodedImages, batches, decode_once
from .model import build_model, count_parameters, training_flops
from .plots import plot_curves
from .runtime import autocast, machine_description, resolve_device, resolve_precision, seed_everything
from .transforms import build_test_transform, build_train_transform

log = logging.getLogger("ferkit")
METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "select_loss", "select_acc", "select_macro_f1",
                 "images_per_s", "epoch_seconds", "gflop_per_image", "pflop", "best"]


class TrainingInterrupted(FerkitError):
    pass


class EpochSampler(Sampler[int]):
    """One process's share of a permutation seeded by (seed, epoch), optionally from part-way (a resumed epoch).

    Process r of N takes positions r, r+N, r+2N, ... of the permutation, so the k-th batch of every process
    together make up the same global batch whatever N is, one process included. The permutation is cut to a
    multiple of N rather than padded: what is cut lies in the last, incomplete global batch, dropped anyway.
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.size, generator=g)[: self.size - self.size % self.world_size]
        return iter(order[self.rank::self.world_size][self.start:].tolist())

    def __len__(self) -> int:
        return self.size // self.world_size - self.start


Batch = tuple[torch.Tensor | None, torch.Tensor | None, list[str]]  # images, targets, unreadable files skipped


class TrainBatches(ABC):
    """One process's training batches of an epoch, in the EpochSampler's order: (images, targets, skipped names).

    Images and targets are on the training device, images in the model's memory layout.
    """

    def __init__(self, size: int, cfg: Config, device: torch.device, batch_size: int,
                 memory_format: torch.memory_format) -> None:
        self.size, self.cfg, self.device, self.batch_size = size, cfg, device, batch_size
        self.memory_format = memory_format
        self.sampler = EpochSampler(size, cfg.seed, dist.rank(), dist.world_size())
        self.epoch, self.start_step = 0, 0
        self.skipped: list[str] = []  # unreadable files left out before training (the batched pipeline)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step
        self.sampler.set_epoch(epoch, start_step * self.batch_size)

    @abstractmethod
    def __iter__(self) -> Iterator[Batch]: ...

    @abstractmethod
    def description(self) -> str: ...


class WorkerBatches(TrainBatches):
    """DataLoader workers decode every image and run the torchvision reference augmentations on it, every epoch."""

    def __init__(self, samples: list[Sample], cfg: Config, device: torch.device, batch_size: int,
                 memory_format: torch.memory_format) -> None:
        super().__init__(len(samples), cfg, device, batch_size, memory_format)
        dataset = FerDataset(samples, build_train_transform(cfg), cfg.bad_images == "skip")
        self.generator = torch.Generator()
        self.loader = make_loader(dataset, batch_size, cfg.workers, device, sampler=self.sampler, drop_last=True,
                                  generator=self.generator, worker_init_fn=_ignore_stop_signals,
                                  collate_fn=collate_skipping)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        super().set_epoch(epoch, start_step)
        self.generator.manual_seed(_augmentation_seed(self.cfg, epoch))  # seeds the workers' augmentation

    def __iter__(self) -> Iterator[Batch]:
        for images, targets, bad in self.loader:
            if images is not None:
                # From pinned memory on CUDA, so the copy overlaps the previous step's compute.
                images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
                targets = targets.to(self.device, non_blocking=True)
            yield images, targets, bad

    def description(self) -> str:
        return f"workers data pipeline ({self.cfg.workers} DataLoader workers decode and augment image by image)"


class DecodedBatches(TrainBatches):
    """The split decoded once into a uint8 tensor kept on the device; BatchAugment augments each batch there.

    Nothing crosses from the host per step. Each step's augmentation is drawn from a generator seeded by
    (seed, epoch, process, step), so a resumed epoch replays its remaining steps' draws with no state saved.
    """

    def __init__(self, samples: list[Sample], cfg: Config, device: torch.device, batch_size: int,
                 memory_format: torch.memory_format) -> None:
        decoded = _decode_first_per_machine(samples, cfg)
        super().__init__(len(decoded.labels), cfg, device, batch_size, memory_format)
        self.skipped = decoded.skipped
        self.images, self.labels = decoded.images.to(device), decoded.labels.to(device)
        self.augment = BatchAugment(cfg).to(device)
        self.generator = torch.Generator(device)
        self.origin = (f"read from the cache {decoded.cache_file}" if decoded.reused
                       else f"written to the cache {decoded.cache_file}" if decoded.cache_file
                       else "kept in memory, as CSV rows need no cache")

    def __iter__(self) -> Iterator[Batch]:
        order = torch.tensor(list(self.sampler), dtype=torch.int64)
        steps = batches(self.images, self.labels, order, self.batch_size, self.device, drop_last=True)
        for step, (images, targets) in enumerate(steps, start=self.start_step):
            self.generator.manual_seed(_step_seed(self.cfg, self.epoch, step))
            yield self.augment(images, self.generator).to(memory_format=self.memory_format), targets, []

    def description(self) -> str:
        return (f"batched data pipeline ({self.size} images decoded once, {self.origin}; "
                f"augmented a batch at a time on {self.device})")


def _decode_first_per_machine(samples: list[Sample], cfg: Config) -> DecodedImages:
    # The first process of each machine decodes and fills the cache (each machine may have its own); the others
    # wait, then load it, rather than all decode the same files at once.
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    if not first:
        dist.barrier()
    decoded = decode_once(samples, cfg.cache_dir, skip_bad=cfg.bad_images == "skip")
    if first:
        dist.barrier()
    return decoded


def _step_seed(cfg: Config, epoch: int, step: int) -> int:
    # SeedSequence mixes the four numbers, so no two (epoch, process, step) share a stream as sums could.
    entropy = [cfg.seed % 2**64, epoch, dist.rank(), step]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the epoch in progress (non-zero only after an interruption)
    best_acc: float = -1.0
    best_epoch: int = 0
    seconds: float = 0.0
    pflop: float = 0.0  # training compute spent so far (forward + backward FLOPs of every image trained on)
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # running sums of the interrupted epoch
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (--bad-images skip)
    nonfinite_steps: list[str] = field(default_factory=list)  # "epoch:step" of steps skipped (--nonfinite skip)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _ignore_stop_signals(_worker_id: int) -> None:
    # Ctrl-C, and a SIGTERM sent to the process group (timeout, a job scheduler), reach the workers too. Only the
    # main process handles them, so workers keep serving until it has saved; they exit when it shuts them down,
    # or on their own when it dies (DataLoader workers watch their parent).
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""
    requested: list[int] = []
    handler = lambda signum, _frame: requested.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    # Every process checks, so that all of them stop with the error, before the main one changes anything.
    if resume and not (out / "last.pth").is_file():
        raise FerkitError(f"cannot resume: {out}/last.pth does not exist; start the run without --resume")
    held = not resume and out.exists() and any(out.iterdir())
    if held and not overwrite:
        raise FerkitError(f"run folder {out} already holds a run; resume it with --resume, "
                          "choose another --out, or pass --overwrite to replace it")
    dist.barrier()
    if not dist.is_main():
        return
    if resume:
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing a checkpoint
            stale.unlink()
        return
    if held:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _setup_logging(out: Path) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    log.propagate = False
    if not dist.is_main():  # the main process reports for all (what it needs from the others is gathered)
        log.addHandler(logging.NullHandler())
        return
    file_handler = logging.FileHandler(out / "train.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    stream = logging.StreamHandler(sys.stdout)
    log.addHandler(file_handler)
    log.addHandler(stream)


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    # Decay only weight matrices and kernels: decaying norm scales and biases only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One kernel for the whole update on CUDA. Elsewhere None keeps PyTorch's default (False would also turn
    # off its multi-tensor path).
    fused = True if decay[0].is_cuda else None
    return torch.optim.AdamW(groups, lr=cfg.effective_lr(), fused=fused)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Cosine annealing from the effective lr to min_lr over the whole run (in epochs or in steps).

    With ``warmup_epochs`` the lr first rises linearly from lr/25 to the effective lr, and the cosine spans
    the rest of the run.
    """
    per_epoch = steps_per_epoch if cfg.schedule_unit == "step" else 1
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    floor = min(cfg.min_lr / cfg.effective_lr(), 1.0)

    def factor(t: int) -> float:
        if t < warmup:
            return 1 / 25 + (1 - 1 / 25) * t / warmup
        progress = min((t - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def load_scheduler_state(scheduler, state: dict) -> None:
    # Checkpoints written before warmup existed hold CosineAnnealingLR's state: the same step count and base
    # lrs, without LambdaLR's (unpicklable, hence None) lr_lambdas entry.
    state.setdefault("lr_lambdas", [None] * len(scheduler.base_lrs))
    scheduler.load_state_dict(state)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) training; returns the final report. Everything lands in ``cfg.out``.

    Launched by torchrun, every process calls this, and together they train one model.
    """
    with dist.process_group():
        return _train(cfg, resume, overwrite)


def _train(cfg: Config, resume: bool, overwrite: bool) -> dict:
    out = Path(cfg.out)
    prepare_run_dir(out, resume, overwrite)
    ckpt = read_checkpoint(out / "last.pth") if resume else None
    if ckpt is not None:
        cfg = Config.from_dict({**ckpt["config"], "out": str(out)})
    _setup_logging(out)
    if dist.is_main():
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    splits = load_splits(cfg.data, cfg.protocol, cfg.limit_per_class)
    if ckpt is not None:
        check_classes(out / "last.pth", tuple(ckpt["classes"]), splits.classes)
    device = dist.process_device(resolve_device(cfg.device))
    precision = resolve_precision(cfg.precision, device)
    pipeline = resolve_data_pipeline(cfg.data_pipeline, device)
    channels_last = resolve_channels_last(cfg.channels_last, device, precision)
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    local_batch = dist.local_batch_size(cfg.batch_size)
    seed_everything(cfg.seed)

    model = build_model(cfg, len(splits.classes))
    if cfg.sync_bn:
        model = dist.convert_sync_batchnorm(model, device)
    gflop_per_image = training_flops(model, cfg.image_size) / 1e9
    model = model.to(device, memory_format=memory_format)
    optimizer = build_optimizer(model, cfg)
    # The average's weights are what evaluation, best.pth and the report see; training steps the raw weights.
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay),
                                               use_buffers=True) if cfg.ema_decay else None)
    eval_model = ema.module if ema is not None else model
    feed = DecodedBatches if pipeline == "batched" else WorkerBatches
    train_batches = feed(splits.train, cfg, device, local_batch, memory_format)
    steps_per_epoch = train_batches.size // cfg.batch_size
    if steps_per_epoch == 0:
        raise FerkitError(f"{train_batches.size} training images are fewer than one batch of {cfg.batch_size}; "
                          "lower --batch-size")
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)

    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        load_scheduler_state(scheduler, ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        if not dist.is_main():
            state.partial = {}  # the interrupted epoch's sums are totals over all processes: one carries them on
        if state.step:
            _restore_rng(ckpt["rng"])
    # DDP first, then compile: PyTorch's guidance, so that the compiler splits the graph at DDP's gradient buckets.
    # Checkpoints keep saving ``model`` itself, whose keys carry neither wrapper's prefix.
    train_model = dist.wrap(model, device)
    if cfg.compile:
        train_model = torch.compile(train_model)
    writer = _tensorboard(out) if cfg.tensorboard and dist.is_main() else None

    processes = f" ({local_batch} per process x {dist.world_size()} processes)" if dist.world_size() > 1 else ""
    log.info(f"ferkit train: {cfg.arch} ({count_parameters(model) / 1e6:.2f}M parameters) at "
             f"{cfg.image_size}x{cfg.image_size}, {cfg.epochs} epochs, batch {cfg.batch_size}{processes}, "
             f"lr {cfg.effective_lr():.2e} ({cfg.lr_scaling} scaling of {cfg.lr:.2e} for batch 32), device {device}")
    log.info(f"data: {len(splits.train)} train, {len(splits.select)} {splits.names['select']} (selection), "
             f"{len(splits.report)} {splits.names['report']} (report); protocol {cfg.protocol}; run folder {out}")
    log.info(f"speed: {train_batches.description()}; {precision} training precision, {cfg.eval_precision} "
             f"evaluation; {'channels_last' if channels_last else 'contiguous'} memory layout; "
             f"torch.compile {'on' if cfg.compile else 'off'}")
    epoch_pflop = gflop_per_image * steps_per_epoch * cfg.batch_size / 1e6
    log.info(f"compute: {gflop_per_image:.3f} GFLOP per training image (forward + backward), {epoch_pflop:.4f} PFLOP "
             f"an epoch, {epoch_pflop * cfg.epochs:.3f} PFLOP for {cfg.epochs} epochs; machine: {machine_description()}")
    unrecorded = [name for name in train_batches.skipped if name not in state.skipped]  # a resumed run has them
    if unrecorded:
        state.skipped += unrecorded
        log.warning(f"skipped unreadable images (--bad-images skip): {', '.join(unrecorded)}")

    def checkpoint(name: str, weights: nn.Module, **extra) -> None:
        if dist.is_main():
            atomic_save(make_checkpoint(weights, cfg, splits.classes, **extra), out / name)

    def save_last(rng: dict | None = None) -> None:
        averaged = {"ema": ema.state_dict()} if ema is not None else {}
        checkpoint("last.pth", model, optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                   state=state.__dict__, rng=rng or {}, **averaged)

    with stop_requests() as stop:
        while state.epoch < cfg.epochs:
            epoch = state.epoch
            start_step = state.step
            if not start_step:
                # The global generator drives dropout, and the worker pipeline's augmentation with --workers 0.
                torch.manual_seed(_augmentation_seed(cfg, epoch))
            train_batches.set_epoch(epoch, start_step)
            skipped_before = len(state.skipped)
            t0 = time.perf_counter()
            try:
                sums = _train_epoch(train_model, train_batches, optimizer, scheduler, cfg, device, precision, state,
                                    stop, steps_per_epoch, ema)
            except torch.cuda.OutOfMemoryError:
                raise FerkitError(f"out of memory on {device} with batch size {cfg.batch_size}{processes} at "
                                  f"{cfg.image_size}x{cfg.image_size}; retry with a smaller --batch-size "
                                  "(the learning rate is rescaled for it)") from None
            _gather_skipped(state, skipped_before)
            state.seconds += time.perf_counter() - t0
            signum = _agreed_stop(stop)
            if signum:
                state.partial = sums
                save_last({"torch": dist.gather(torch.get_rng_state())})
                again = (f"ferkit train --resume {out}" if dist.world_size() == 1
                         else f"the same launch command with --resume {out}")
                raise TrainingInterrupted(
                    f"interrupted by {signal.Signals(signum).name} at epoch {epoch + 1} step {state.step}; "
                    f"state saved to {out}/last.pth; continue with: {again}"
                )
            if sums["seen"] == 0:
                raise FerkitError(f"no batch of epoch {epoch + 1} could be trained on (every image unreadable, "
                                  "or batches of one image); check the data or raise --batch-size")
            if cfg.schedule_unit == "epoch":
                scheduler.step()
            dist.broadcast_buffers(eval_model)
            metrics = _measure(eval_model, splits.select, splits.classes, cfg, device)
            seconds = time.perf_counter() - t0
            state.epoch, state.step, state.partial = epoch + 1, 0, {}
            state.pflop += gflop_per_image * sums["seen"] / 1e6
            improved = metrics["accuracy"] > state.best_acc
            if improved:
                state.best_acc, state.best_epoch = metrics["accuracy"], epoch + 1
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": sums["loss"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
                   "select_loss": metrics["loss"], "select_acc": metrics["accuracy"],
                   "select_macro_f1": metrics["macro_f1"], "images_per_s": sums["images_per_s"],
                   "epoch_seconds": seconds, "gflop_per_image": gflop_per_image, "pflop": state.pflop,
                   "best": improved}
            state.history.append(row)
            if improved:
                checkpoint("best.pth", eval_model, epoch=epoch + 1, metrics={k: metrics[k] for k in ("accuracy", "macro_f1")},
                           select_split=splits.names["select"])
            save_last()
            if dist.is_main():
                _log_epoch(out, state.history, writer, cfg.epochs,
                           f"{splits.names['select']} ({metrics['images']} images)")
                plot_curves(state.history, out / "curves.png")
            if state.skipped:
                log.info(f"{len(state.skipped)} unreadable images skipped so far (listed above in train.log)")
    if writer is not None:
        writer.close()
    dist.barrier()  # the report reads best.pth: every process waits until the main one has written it
    return final_report(out, splits, cfg, state, device, precision)


def resolve_data_pipeline(name: str, device: torch.device) -> str:
    # On a GPU, workers decoding and augmenting image by image cannot keep up; on a CPU the model dominates the
    # step, and workers overlap the input work with it rather than adding it to the step.
    if name != "auto":
        return name
    return "batched" if device.type == "cuda" else "workers"


def resolve_channels_last(name: str, device: torch.device, precision: str) -> bool:
    # GPU convolution kernels are fastest channels-last. On CPUs it measured faster in bf16 with native bf16
    # (Zen 4 and Zen 5, 1.0-1.3x), slower in fp32 on the AVX2 EPYC (0.86-0.96x).
    if name != "auto":
        return name == "on"
    return device.type == "cuda" or precision == "bf16"


def _augmentation_seed(cfg: Config, epoch: int) -> int:
    # Differs between processes, or all would draw the same crops and flips; the sampler seeds the data order.
    return cfg.seed * 1_000_003 + epoch + (dist.rank() << 32)


def _restore_rng(rng: dict) -> None:
    states = rng["torch"]
    states = states if isinstance(states, list) else [states]  # written before multi-process training existed
    # On another number of processes the data order is kept; only this epoch's augmentation draws differ.
    torch.set_rng_state(states[dist.rank() % len(states)])


def _agreed_stop(stop: list[int]) -> int:
    """The signal that stops the run (0: none), agreed so that every process stops after the same step."""
    return dist.max_over_ranks(stop[0] if stop else 0)


def _gather_skipped(state: TrainState, since: int) -> None:
    """Put the unreadable images every process met after ``since`` in the list the main process logs and saves."""
    per_process = dist.gather(state.skipped[since:])
    others = [name for r, names in enumerate(per_process) if r != dist.rank() for name in names]
    if others:
        log.warning(f"skipped unreadable images in other processes (--bad-images skip): {', '.join(others)}")
    state.skipped[since:] = [name for names in per_process for name in names]


def _train_epoch(model, train_batches: TrainBatches, optimizer, scheduler, cfg: Config, device: torch.device,
                 precision: str, state: TrainState, stop: list[int], steps_per_epoch: int, ema) -> dict:
    """Train on the epoch's remaining batches; returns the epoch's sums over all processes."""
    model.train()
    # Running sums stay on the device: reading them every step would synchronise the GPU each batch.
    loss_sum = torch.tensor(state.partial.get("loss", 0.0), device=device)
    correct = torch.tensor(state.partial.get("correct", 0), device=device)
    seen = state.partial.get("seen", 0)
    timed_images, t0 = 0, time.perf_counter()
    bar = tqdm(total=steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               leave=False, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr,
               disable=not dist.is_main())
    with bar:  # closing the bar on any exit keeps error messages on a line of their own
        for images, targets, bad in train_batches:
            state.step += 1
            bar.update(1)
            if bad:
                state.skipped.extend(bad)
                log.warning(f"skipped unreadable images (--bad-images skip): {', '.join(bad)}")
            # BatchNorm needs two samples to train on; DDP needs every process in every step, so all skip together.
            if dist.all_ranks(images is not None and len(targets) > 1):
                result = _train_step(model, images, targets, optimizer, cfg, device, precision, state)
                if result is not None and ema is not None:
                    ema.update_parameters(model.module if hasattr(model, "module") else model)
                if result is not None:
                    loss_sum += result[0] * len(targets)
                    correct += result[1]
                    seen += len(targets)
                    timed_images += len(targets)
            if cfg.schedule_unit == "step":
                scheduler.step()
            if state.step % 20 == 0 or state.step == steps_per_epoch:
                # Checked where the progress bar synchronises anyway; checkpoints are only written after this
                # check passes at the epoch's end, so a diverged model never overwrites a good one.
                loss_all, correct_all, seen_all = dist.sum_over_ranks([loss_sum.item(), correct.item(), seen])
                if not math.isfinite(loss_all):
                    raise FerkitError(f"non-finite loss at epoch {state.epoch + 1} step {state.step}; the last good "
                                      "checkpoint is kept; lower --lr or check the data, then --resume "
                                      "(or --nonfinite skip)")
                if seen_all:
                    bar.set_postfix(loss=f"{loss_all / seen_all:.3f}", acc=f"{correct_all / seen_all:.3f}",
                                    img_s=f"{timed_images * dist.world_size() / (time.perf_counter() - t0):.1f}")
            if _agreed_stop(stop):
                break
    loss_all, correct_all, seen_all, timed_all = dist.sum_over_ranks([float(loss_sum), float(correct), seen,
                                                                      timed_images])
    return {"loss": loss_all, "correct": int(correct_all), "seen": int(seen_all),
            "images_per_s": timed_all / max(time.perf_counter() - t0, 1e-9)}


def _measure(model: nn.Module, samples: list, classes: tuple[str, ...], cfg: Config, device: torch.device) -> dict:
    """Metrics over all of ``samples``, each image counted once: every process predicts its own unpadded share."""
    dataset = FerDataset(samples[dist.rank()::dist.world_size()], build_test_transform(cfg),
                         cfg.bad_images == "skip")
    loader = make_loader(dataset, dist.local_batch_size(cfg.batch_size) * 2, cfg.workers, device,
                         worker_init_fn=_ignore_stop_signals, collate_fn=collate_skipping)
    shares = dist.gather(collect_probs(model, loader, device, cfg.eval_precision))
    probs, labels = np.concatenate([p for p, _ in shares]), np.concatenate([y for _, y in shares])
    return compute_metrics(labels, probs, classes)


def _train_step(model, images, targets, optimizer, cfg: Config, device: torch.device, precision: str,
                state: TrainState) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One optimizer step; returns (loss, correct) as device tensors, or None for a skipped non-finite step."""
    with autocast(device, precision):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    if cfg.nonfinite == "skip" and not dist.all_ranks(bool(torch.isfinite(loss))):
        state.nonfinite_steps.append(f"{state.epoch + 1}:{state.step}")
        log.warning(f"skipped step {state.step} of epoch {state.epoch + 1}: non-finite loss "
                    f"({len(state.nonfinite_steps)} skipped so far)")
        return None
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.argmax(dim=1) == targets).sum()


def _tensorboard(out: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tensorboard"))


def _log_epoch(out: Path, history: list[dict], writer, epochs: int, select_label: str) -> None:
    # Written whole from the history each epoch: a resumed run's file is always complete and has one header,
    # even when it was started by a version of ferkit that recorded fewer columns.
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS, restval="")
        w.writeheader()
        w.writerows(history)
    row = history[-1]
    if writer is not None:
        for key in METRIC_FIELDS[1:-1]:
            writer.add_scalar(key, row[key], row["epoch"])
        writer.flush()
    log.info(f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
             f"acc {row['train_acc']:.4f}  {select_label} loss {row['select_loss']:.4f} acc {row['select_acc']:.4f} "
             f"F1 {row['select_macro_f1']:.4f}  {row['images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f}s  "
             f"{row['pflop']:.3f} PFLOP" + ("  (best, saved best.pth)" if row["best"] else ""))


def final_report(out: Path, splits: Splits, cfg: Config, state: TrainState, device: torch.device,
                 precision: str) -> dict:
    """Measure best.pth once on the report split (PrivateTest under the clean protocol), with the run's cost."""
    model = load_model(out / "best.pth", splits.classes).model.to(device)
    metrics = _measure(model, splits.report, splits.classes, cfg, device)
    metrics.update(protocol=cfg.protocol, split=splits.names["report"], selected_on=splits.names["select"],
                   best_epoch=state.best_epoch, epochs=cfg.epochs, train_seconds=round(state.seconds, 1),
                   train_minutes=round(state.seconds / 60, 2), pflop=state.pflop,
                   gflop_per_image=state.history[-1].get("gflop_per_image") if state.history else None,
                   precision=cfg.eval_precision, train_precision=precision, machine=machine_description(),
                   checkpoint=str(out / "best.pth"))
    if dist.is_main():
        write_report(metrics, splits.classes, out, "report",
                     f"{metrics['split']} ({cfg.protocol} protocol), best epoch {state.best_epoch}: "
                     f"acc {metrics['accuracy']:.3f}")
    log.info(f"report: {metrics['split']} with best.pth from epoch {state.best_epoch} "
             f"(selected on {metrics['selected_on']}), {cfg.eval_precision} evaluation\n"
             + format_metrics(metrics, splits.classes)
             + f"\ncost: {state.pflop:.3f} PFLOP of training, {state.seconds / 60:.1f} min wall "
               f"({precision} training) on {machine_description()}")
    return metrics

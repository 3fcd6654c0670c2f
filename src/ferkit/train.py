"""The specification's training loop (SPEC.md section 3) with what users expect around it.

Per epoch: ``model.train()``, an AdamW step per batch on label-smoothed cross-entropy, then
``model.eval()`` under ``no_grad`` on the selection split, one cosine ``scheduler.step()``, metrics
to CSV/TensorBoard/PNG, ``last.pth`` always and ``best.pth`` only on improvement (both atomic).

Data order and augmentation randomness depend only on (seed, epoch), so ``--resume`` replays the
rest of a run exactly as an uninterrupted one would have run it.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from .checkpoint import atomic_save, check_classes, load_model, make_checkpoint, read_checkpoint
from .config import Config
from .data import FerDataset, Splits, collate_skipping, load_splits
from .errors import FerkitError
from .evaluate import collect_probs, compute_metrics, format_metrics, make_loader, write_report
from .model import build_model, count_parameters
from .plots import plot_curves
from .runtime import autocast, resolve_device, resolve_precision, seed_everything
from .transforms import build_test_transform, build_train_transform

log = logging.getLogger("ferkit")
METRIC_FIELDS = ["epoch", "lr", "train_loss", "train_acc", "select_loss", "select_acc", "select_macro_f1",
                 "images_per_s", "epoch_seconds", "best"]


class TrainingInterrupted(FerkitError):
    pass


class EpochSampler(Sampler[int]):
    """A permutation seeded by (seed, epoch), optionally starting part-way (for a resumed epoch)."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.start = size, seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=g)[self.start:].tolist())

    def __len__(self) -> int:
        return self.size - self.start


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # batches done in the epoch in progress (non-zero only after an interruption)
    best_acc: float = -1.0
    best_epoch: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # running sums of the interrupted epoch
    skipped: list[str] = field(default_factory=list)  # unreadable images left out (--bad-images skip)
    nonfinite_steps: list[str] = field(default_factory=list)  # "epoch:step" of steps skipped (--nonfinite skip)


def _ignore_sigint(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group; only the main process handles it, so workers keep serving.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def stop_requests() -> Iterator[list[int]]:
    """Turn SIGINT/SIGTERM into a flag checked between steps, so a step is never cut in half."""
    requested: list[int] = []
    handler = lambda signum, _frame: requested.append(signum)  # noqa: E731
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run_dir(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        if not (out / "last.pth").is_file():
            raise FerkitError(f"cannot resume: {out}/last.pth does not exist; start the run without --resume")
        for stale in out.glob(".*.tmp"):  # left by a process killed while writing a checkpoint
            stale.unlink()
        return
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FerkitError(f"run folder {out} already holds a run; resume it with --resume, "
                              "choose another --out, or pass --overwrite to replace it")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def _setup_logging(out: Path) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    file_handler = logging.FileHandler(out / "train.log")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    stream = logging.StreamHandler(sys.stdout)
    log.addHandler(file_handler)
    log.addHandler(stream)
    log.propagate = False


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.AdamW:
    # Decay only weight matrices and kernels: decaying norm scales and biases only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.effective_lr())


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int):
    """Cosine annealing from the effective lr to min_lr over the whole run (in epochs or in steps)."""
    total = cfg.epochs * (steps_per_epoch if cfg.schedule_unit == "step" else 1)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr)


def train(cfg: Config, resume: bool = False, overwrite: bool = False) -> dict:
    """Run (or resume) training; returns the final report. Everything lands in ``cfg.out``."""
    out = Path(cfg.out)
    prepare_run_dir(out, resume, overwrite)
    ckpt = read_checkpoint(out / "last.pth") if resume else None
    if ckpt is not None:
        cfg = Config.from_dict({**ckpt["config"], "out": str(out)})
    _setup_logging(out)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    splits = load_splits(cfg.data, cfg.protocol, cfg.limit_per_class)
    if ckpt is not None:
        check_classes(out / "last.pth", tuple(ckpt["classes"]), splits.classes)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    seed_everything(cfg.seed)

    model = build_model(cfg.arch, len(splits.classes), cfg.dropout, cfg.hidden).to(device)
    optimizer = build_optimizer(model, cfg)
    skip_bad = cfg.bad_images == "skip"
    train_set = FerDataset(splits.train, build_train_transform(cfg), skip_bad)
    steps_per_epoch = len(train_set) // cfg.batch_size
    if steps_per_epoch == 0:
        raise FerkitError(f"{len(train_set)} training images are fewer than one batch of {cfg.batch_size}; "
                          "lower --batch-size")
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch)

    state = TrainState()
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = TrainState(**ckpt["state"])
        if state.step:
            torch.set_rng_state(ckpt["rng"]["torch"])

    sampler = EpochSampler(len(train_set), cfg.seed)
    loader_generator = torch.Generator()
    train_loader = make_loader(train_set, cfg.batch_size, cfg.workers, device, sampler=sampler, drop_last=True,
                               generator=loader_generator, worker_init_fn=_ignore_sigint,
                               collate_fn=collate_skipping)
    select_loader = _eval_loader(splits.select, cfg, device)
    writer = _tensorboard(out) if cfg.tensorboard else None

    log.info(f"ferkit train: {cfg.arch} ({count_parameters(model) / 1e6:.2f}M parameters) at "
             f"{cfg.image_size}x{cfg.image_size}, {cfg.epochs} epochs, batch {cfg.batch_size}, "
             f"lr {cfg.effective_lr():.2e}, device {device}, precision {precision}")
    log.info(f"data: {len(splits.train)} train, {len(splits.select)} {splits.names['select']} (selection), "
             f"{len(splits.report)} {splits.names['report']} (report); protocol {cfg.protocol}; run folder {out}")

    def checkpoint(name: str, **extra) -> None:
        atomic_save(make_checkpoint(model, cfg, splits.classes, **extra), out / name)

    def save_last(rng: dict | None = None) -> None:
        checkpoint("last.pth", optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                   state=state.__dict__, rng=rng or {})

    with stop_requests() as stop:
        while state.epoch < cfg.epochs:
            epoch = state.epoch
            start_step = state.step
            if not start_step:
                # Augmentation in the main process (workers=0) draws from the global generator.
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)
            sampler.set_epoch(epoch, start_step * cfg.batch_size)
            loader_generator.manual_seed(cfg.seed * 1_000_003 + epoch)
            t0 = time.perf_counter()
            try:
                sums = _train_epoch(model, train_loader, optimizer, scheduler, cfg, device, precision, state, stop,
                                    steps_per_epoch)
            except torch.cuda.OutOfMemoryError:
                raise FerkitError(f"out of memory on {device} with batch size {cfg.batch_size} at "
                                  f"{cfg.image_size}x{cfg.image_size}; retry with a smaller --batch-size "
                                  "(the learning rate is rescaled for it)") from None
            state.seconds += time.perf_counter() - t0
            if stop:
                state.partial = sums
                save_last({"torch": torch.get_rng_state()})
                raise TrainingInterrupted(
                    f"interrupted by {signal.Signals(stop[0]).name} at epoch {epoch + 1} step {state.step}; "
                    f"state saved to {out}/last.pth; continue with: ferkit train --resume {out}"
                )
            if sums["seen"] == 0:
                raise FerkitError(f"no batch of epoch {epoch + 1} could be trained on (every image unreadable, "
                                  "or batches of one image); check the data or raise --batch-size")
            if cfg.schedule_unit == "epoch":
                scheduler.step()
            probs, labels = collect_probs(model, select_loader, device, precision)
            metrics = compute_metrics(labels, probs, splits.classes)
            seconds = time.perf_counter() - t0
            state.epoch, state.step, state.partial = epoch + 1, 0, {}
            improved = metrics["accuracy"] > state.best_acc
            if improved:
                state.best_acc, state.best_epoch = metrics["accuracy"], epoch + 1
            row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"],
                   "train_loss": sums["loss"] / sums["seen"], "train_acc": sums["correct"] / sums["seen"],
                   "select_loss": metrics["loss"], "select_acc": metrics["accuracy"],
                   "select_macro_f1": metrics["macro_f1"], "images_per_s": sums["images_per_s"],
                   "epoch_seconds": seconds, "best": improved}
            state.history.append(row)
            if improved:
                checkpoint("best.pth", epoch=epoch + 1, metrics={k: metrics[k] for k in ("accuracy", "macro_f1")},
                           select_split=splits.names["select"])
            save_last()
            _log_epoch(out, row, writer, cfg.epochs, splits.names["select"])
            if state.skipped:
                log.info(f"{len(state.skipped)} unreadable images skipped so far (listed above in train.log)")
            plot_curves(state.history, out / "curves.png")
    if writer is not None:
        writer.close()
    return final_report(out, splits, cfg, state, device, precision)


def _train_epoch(model, loader: DataLoader, optimizer, scheduler, cfg: Config, device: torch.device,
                 precision: str, state: TrainState, stop: list[int], steps_per_epoch: int) -> dict:
    model.train()
    # Running sums stay on the device: reading them every step would synchronise the GPU each batch.
    loss_sum = torch.tensor(state.partial.get("loss", 0.0), device=device)
    correct = torch.tensor(state.partial.get("correct", 0), device=device)
    seen = state.partial.get("seen", 0)
    timed_images, t0 = 0, time.perf_counter()
    bar = tqdm(total=steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{cfg.epochs}",
               leave=False, mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr)
    with bar:  # closing the bar on any exit keeps error messages on a line of their own
        for images, targets, bad in loader:
            state.step += 1
            bar.update(1)
            if bad:
                state.skipped.extend(bad)
                log.warning(f"skipped unreadable images (--bad-images skip): {', '.join(bad)}")
            if images is not None and len(targets) > 1:  # BatchNorm needs two samples to train on
                result = _train_step(model, images.to(device, non_blocking=True),
                                     targets.to(device, non_blocking=True), optimizer, cfg, device, precision, state)
                if result is not None:
                    loss_sum += result[0] * len(targets)
                    correct += result[1]
                    seen += len(targets)
                    timed_images += len(targets)
            if cfg.schedule_unit == "step":
                scheduler.step()
            if seen and (state.step % 20 == 0 or state.step == steps_per_epoch):
                # Checked where the progress bar synchronises anyway; checkpoints are only written after this
                # check passes at the epoch's end, so a diverged model never overwrites a good one.
                if not torch.isfinite(loss_sum):
                    raise FerkitError(f"non-finite loss at epoch {state.epoch + 1} step {state.step}; the last good "
                                      "checkpoint is kept; lower --lr or check the data, then --resume "
                                      "(or --nonfinite skip)")
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{timed_images / (time.perf_counter() - t0):.1f}")
            if stop:
                break
    return {"loss": float(loss_sum), "correct": int(correct), "seen": seen,
            "images_per_s": timed_images / max(time.perf_counter() - t0, 1e-9)}


def _eval_loader(samples: list, cfg: Config, device: torch.device) -> DataLoader:
    dataset = FerDataset(samples, build_test_transform(cfg), cfg.bad_images == "skip")
    return make_loader(dataset, cfg.batch_size * 2, cfg.workers, device, worker_init_fn=_ignore_sigint,
                       collate_fn=collate_skipping)


def _train_step(model, images, targets, optimizer, cfg: Config, device: torch.device, precision: str,
                state: TrainState) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One optimizer step; returns (loss, correct) as device tensors, or None for a skipped non-finite step."""
    with autocast(device, precision):
        logits = model(images)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=cfg.label_smoothing)
    if cfg.nonfinite == "skip" and not torch.isfinite(loss):
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


def _log_epoch(out: Path, row: dict, writer, epochs: int, select_name: str) -> None:
    path = out / "metrics.csv"
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=METRIC_FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
    if writer is not None:
        for key in METRIC_FIELDS[1:-1]:
            writer.add_scalar(key, row[key], row["epoch"])
        writer.flush()
    log.info(f"epoch {row['epoch']}/{epochs}  lr {row['lr']:.2e}  train loss {row['train_loss']:.4f} "
             f"acc {row['train_acc']:.4f}  {select_name} loss {row['select_loss']:.4f} acc {row['select_acc']:.4f} "
             f"F1 {row['select_macro_f1']:.4f}  {row['images_per_s']:.1f} img/s  {row['epoch_seconds']:.0f}s"
             + ("  (best, saved best.pth)" if row["best"] else ""))


def final_report(out: Path, splits: Splits, cfg: Config, state: TrainState, device: torch.device,
                 precision: str) -> dict:
    """Measure best.pth once on the report split (PrivateTest under the clean protocol)."""
    model = load_model(out / "best.pth", splits.classes).model.to(device)
    probs, labels = collect_probs(model, _eval_loader(splits.report, cfg, device), device, precision)
    metrics = compute_metrics(labels, probs, splits.classes)
    metrics.update(protocol=cfg.protocol, split=splits.names["report"], selected_on=splits.names["select"],
                   best_epoch=state.best_epoch, epochs=cfg.epochs, train_seconds=round(state.seconds, 1),
                   checkpoint=str(out / "best.pth"))
    write_report(metrics, splits.classes, out, "report",
                 f"{metrics['split']} ({cfg.protocol} protocol), best epoch {state.best_epoch}: "
                 f"acc {metrics['accuracy']:.3f}")
    log.info(f"report: {metrics['split']} with best.pth from epoch {state.best_epoch} "
             f"(selected on {metrics['selected_on']})\n" + format_metrics(metrics, splits.classes))
    return metrics

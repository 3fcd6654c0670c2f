"""The optimisation recipe (specification section 3): AdamW (or SGD), optionally sharpness-aware, and the learning
rate over the run.

The schedule is a pure function of the config and the scheduler's step count, so a resumed run
rebuilds it from the config and continues it from the count saved in last.pth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from ..config import Config

T = TypeVar("T")


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    # Decay only weight matrices and kernels: decaying norm scales and biases only fights the normalisation.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # One kernel for the whole update on CUDA. Elsewhere None keeps PyTorch's default (False would also turn
    # off its multi-tensor path).
    fused = True if decay[0].is_cuda else None
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            groups, lr=cfg.effective_lr(), momentum=cfg.momentum, nesterov=cfg.momentum > 0, fused=fused
        )
    return torch.optim.AdamW(groups, lr=cfg.effective_lr(), fused=fused)


def sharpness_aware_gradient(model: nn.Module, rho: float, backward: Callable[[], T]) -> T:
    """Replace the gradients in ``model`` by those at the nearby weights where the loss rises fastest (SAM); returns
    what ``backward()`` returned (the loss there).

    The weights move ``rho`` along the current gradient (normalised over all parameters), ``backward()`` runs the
    batch's loss again there and back-propagates it, and the weights return, so the optimizer's step that follows
    takes the gradient of that neighbourhood's worst point. BatchNorm's running statistics keep the first pass's
    update only: the second pass sees the same batch at weights nobody evaluates.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
    scale = rho / (norm + 1e-12)  # a tensor: reading it as a number would wait for the GPU every step
    start = [p.detach().clone() for p in params]  # restored exactly: w + e - e may round away from w
    with torch.no_grad():
        for p in params:
            p.add_(p.grad * scale)
            p.grad = None
    with _running_stats_frozen(model):
        result = backward()
    with torch.no_grad():
        for p, w in zip(params, start):
            p.copy_(w)
    return result


@contextmanager
def _running_stats_frozen(model: nn.Module) -> Iterator[None]:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def lr_factor(cfg: Config, steps_per_epoch: int) -> Callable[[int], float]:
    """The lr after ``t`` scheduler steps, as a fraction of the effective lr.

    Cosine annealing from the effective lr to min_lr over the whole run (in epochs or in steps). With
    ``warmup_epochs`` the lr first rises linearly from lr/25 to the effective lr, and the cosine spans the rest.
    """
    per_epoch = steps_per_epoch if cfg.schedule_unit == "step" else 1
    total, warmup = cfg.epochs * per_epoch, round(cfg.warmup_epochs * per_epoch)
    floor = min(cfg.min_lr / cfg.effective_lr(), 1.0)

    def factor(t: int) -> float:
        if t < warmup:
            return 1 / 25 + (1 - 1 / 25) * t / warmup
        progress = min((t - warmup) / max(total - warmup, 1), 1.0)
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config, steps_per_epoch: int) -> LambdaLR:
    return LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))


def continue_schedule(scheduler: LambdaLR, cfg: Config, was_epochs: int) -> str:
    """Move a resumed run onto the schedule of its new ``cfg.epochs`` at once; returns the train.log line saying so.

    From the step reached, the lr follows the schedule a run planned for ``cfg.epochs`` would: it takes that
    schedule's value there (higher, for more epochs) and decays to min_lr by the new last epoch.
    """
    groups = scheduler.optimizer.param_groups
    before = groups[0]["lr"]
    for group, base, factor in zip(groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    return (
        f"lr schedule: stretched to {cfg.epochs} epochs (was {was_epochs}); the lr goes from {before:.2e} to "
        f"{groups[0]['lr']:.2e} here and decays to {cfg.min_lr:.2e} by epoch {cfg.epochs}"
    )

"""Multi-process training on PyTorch's own engine: torchrun starts the processes, ferkit joins them.

torchrun (or ``ferkit train --nproc N``, which calls it) gives every process RANK, LOCAL_RANK and
WORLD_SIZE. Without them ferkit trains in one process as it always did, and the helpers here
change nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import FerkitError


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else int(os.environ.get("RANK", 0))


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else int(os.environ.get("WORLD_SIZE", 1))


def is_main() -> bool:
    return rank() == 0


def backend() -> str:
    # Collectives on CPU tensors (control flags, metrics, objects) go to gloo, gradients on GPUs to nccl.
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


@contextmanager
def process_group() -> Iterator[None]:
    """Join the process group torchrun describes in the environment, for the duration of a run.

    A group the caller started already is used as it is and left running.
    """
    if is_distributed() or world_size() == 1:
        yield
        return
    dist.init_process_group(backend())
    try:
        yield
    finally:
        dist.destroy_process_group()


def process_device(device: torch.device) -> torch.device:
    """This process's own GPU (by LOCAL_RANK) in a multi-process run; otherwise ``device`` itself."""
    if device.type != "cuda" or not is_distributed():
        return device
    local_rank, count = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
    if local_rank >= count:
        raise FerkitError(
            f"process {local_rank} on this machine has no GPU of its own ({count} visible); "
            f"start at most {count} processes per machine (--nproc-per-node / --nproc)"
        )
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    return device


def local_batch_size(batch_size: int) -> int:
    """``--batch-size`` is the global batch: each of the N processes takes an N-th of it per step."""
    if batch_size % world_size():
        raise FerkitError(
            f"--batch-size {batch_size} (the global batch) does not split evenly over "
            f"{world_size()} processes; use a multiple of {world_size()}"
        )
    return batch_size // world_size()


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DistributedDataParallel around ``model`` in a multi-process run (it averages the gradients)."""
    if not is_distributed():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _reduce(values: Sequence[float], op: dist.ReduceOp) -> list[float]:
    if not is_distributed():
        return list(values)
    # On the CPU, so a per-step agreement never waits for the GPU to finish its queued work.
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=op)
    return tensor.tolist()


def sum_over_ranks(values: Sequence[float]) -> list[float]:
    return _reduce(values, dist.ReduceOp.SUM)


def max_over_ranks(value: int) -> int:
    return int(_reduce([value], dist.ReduceOp.MAX)[0])


def all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds in every process; they must all take the same branch around a collective."""
    return _reduce([float(flag)], dist.ReduceOp.MIN)[0] == 1.0


def gather(obj: Any) -> list[Any]:
    """``obj`` from every process, in rank order, on every process."""
    if not is_distributed():
        return [obj]
    objects: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def broadcast_buffers(model: nn.Module) -> None:
    """Give every process the main process's buffers (BatchNorm running statistics), so that each one
    evaluates the very model the main process saves."""
    if is_distributed():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


class _AllReduceSum(torch.autograd.Function):
    """A sum over processes whose gradient is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with the statistics of the global batch for gloo runs on CPUs, where PyTorch's SyncBatchNorm
    (CUDA kernels only) does not run. Outside multi-process training it is a plain BatchNorm."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        totals = _AllReduceSum.apply(torch.cat([xf.sum(dims), xf.new_tensor([xf.numel() / xf.size(1)])]))
        count = totals[-1]
        mean = totals[:-1] / count
        centred = xf - mean.view(shape)
        # Two passes (mean, then squared deviations) match F.batch_norm's precision; E[x^2] - E[x]^2 does not.
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * count / (count - 1), self.momentum)
        out = centred * torch.rsqrt(var.view(shape) + self.eps) * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` normalised with the statistics of the global batch (``--sync-bn``).

    N processes of B images then train like one process of N*B images.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            sync = CpuSyncBatchNorm(child.num_features, child.eps, child.momentum)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return module

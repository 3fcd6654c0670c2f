"""Device, precision and seeding choices shared by training, evaluation and prediction."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from . import distributed as dist
from .config import Config
from .errors import FerkitError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FerkitError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    return torch.device(name)


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    # Without AMX or AVX-512 BF16, PyTorch emulates bf16 on the CPU and is many times slower than fp32.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


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


def usable_cores() -> int:
    """The cores this process may run on (its affinity, which containers and taskset narrow), as PyTorch counts them."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """DataLoader workers no more than this process's cores: more only compete for them, and PyTorch warns."""
    return min(requested, usable_cores())


@dataclass(frozen=True)
class Speed:
    """A config's speed settings as this process runs them: ``auto`` decided for its machine, and DataLoader
    workers capped by :func:`loader_workers`."""

    device: torch.device
    precision: str
    pipeline: str
    channels_last: bool
    workers: int

    @classmethod
    def resolve(cls, cfg: Config) -> Speed:
        device = dist.process_device(resolve_device(cfg.device))
        precision = resolve_precision(cfg.precision, device)
        return cls(
            device,
            precision,
            resolve_data_pipeline(cfg.data_pipeline, device),
            resolve_channels_last(cfg.channels_last, device, precision),
            loader_workers(cfg.workers),
        )

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.preserve_format


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def cpu_features() -> str:
    """The CPU's matrix-math extensions that decide training speed: AMX, AVX-512 BF16, AVX-512, AVX2."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "unknown extensions"
    named = [("amx_bf16", "AMX"), ("avx512_bf16", "AVX-512 BF16"), ("avx512f", "AVX-512"), ("avx2", "AVX2")]
    return "/".join(label for flag, label in named if flag in flags) or "no AVX2"


def machine_description() -> str:
    """CPU model, its extensions, core count and GPU, for logs, reports and benchmark records."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
    return f"{cpu} ({cpu_features()}; {bf16}), {os.cpu_count()} cores{gpu}"

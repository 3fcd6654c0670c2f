"""Training throughput of the spec model at 96x96: ferkit's fast input path against a naive baseline.

    python benchmarks/train_throughput.py [--steps N] [--warmup N] [--batch-size N] [--limit 2048]
                                          [--variants fast,fast+channels_last,fast+compile] [--json out.json]

Images per second of whole optimizer steps (data pipeline with the specification's augmentations,
forward, label-smoothed cross-entropy, backward, AdamW step), measured side by side in one run:

- ``baseline``: the spec model in fp32, eager, contiguous memory; a torch DataLoader with the
  specification's settings (batch 32, 4 workers, shuffled) decoding every JPEG and running
  torchvision's PIL (v1) transforms, image by image, in the workers.
- ``fast`` variants: the images decoded once (``ferkit.fastdata.decode_once``, cached on disk),
  augmented a whole batch at a time by ``BatchAugment`` on the training device (on CUDA the decoded
  set is moved to the GPU once, so no step copies from the host), precision from
  ``resolve_precision('auto')`` (bf16 on GPUs and native-bf16 CPUs, fp32 elsewhere), no host-device
  synchronisation inside the timed steps. Modifiers: ``+channels_last`` (memory layout),
  ``+compile`` (torch.compile of the model; its compile time is reported apart, as warm-up),
  ``+bf16`` (bf16 autocast even where it is emulated). The fast path's batch size can differ from
  32 (``--batch-size``); the learning rate then follows the config's rule (``lr_scaling``, sqrt of
  batch/32 by default).

Each variant runs in its own process, so its peak memory (``ru_maxrss``; on CUDA also
``max_memory_allocated``) is its own. Prints a table and the ratio of the best fast variant to the
baseline, and writes JSON including the machine and its load average (other jobs slow every variant).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from torch.utils.data import DataLoader
from torchvision import transforms as T

from ferkit.config import Config
from ferkit.data.batched import BatchAugment, batches, decode_once
from ferkit.data.datasets import FerDataset, Sample, load_splits
from ferkit.data.preprocess import ToRGB
from ferkit.model import build_model
from ferkit.runtime import autocast, machine_description, resolve_device, resolve_precision
from ferkit.training.optim import build_optimizer

MODIFIERS = ("channels_last", "compile", "bf16")


def benchmark_samples(data: str, limit: int) -> list[Sample]:
    """A fixed, class-balanced-in-proportion subset of the training split: every k-th image."""
    samples = load_splits(data).train
    if limit and limit < len(samples):
        samples = samples[:: len(samples) // limit][:limit]
    return samples


def v1_train_transform(cfg: Config) -> T.Compose:
    """The specification's training ops with torchvision's PIL-based v1 transforms (the naive baseline)."""
    return T.Compose(
        [
            ToRGB(),
            T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale)),
            T.RandomHorizontalFlip(cfg.flip_p),
            T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
            T.RandomGrayscale(cfg.grayscale_p),
            T.RandomRotation(cfg.rotation),
            T.ToTensor(),
            T.Normalize(cfg.mean, cfg.std),
            T.RandomErasing(cfg.erasing_p),
        ]
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_steps(step: Step, batches_iter: Iterator, warmup: int, steps: int, device: torch.device) -> dict:
    """Run warm-up steps, then time ``steps`` steps end to end (data included)."""
    t0 = time.perf_counter()
    for _ in range(warmup):
        step(*next(batches_iter))
    sync(device)
    t1 = time.perf_counter()
    images = 0
    for _ in range(steps):
        x, y = next(batches_iter)
        images += len(y)
        step(x, y)
    sync(device)
    elapsed = time.perf_counter() - t1
    return {
        "warmup_s": round(t1 - t0, 2),
        "timed_s": round(elapsed, 2),
        "images": images,
        "images_per_s": round(images / elapsed, 2),
        "step_ms": round(elapsed / steps * 1000, 1),
    }


class Step:
    """One optimizer step; the loss is summed on the device so no step waits for the host to read it."""

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        cfg: Config,
        device: torch.device,
        precision: str,
        prepare: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    ) -> None:
        self.model, self.optimizer, self.cfg, self.device, self.precision = model, optimizer, cfg, device, precision
        self.prepare = prepare
        self.loss_sum = torch.zeros((), device=device)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        with autocast(self.device, self.precision):
            logits = self.model(self.prepare(images))
            loss = F.cross_entropy(logits.float(), targets, label_smoothing=self.cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def loss_finite(self) -> bool:
        return math.isfinite(float(self.loss_sum))


def run_baseline(args: argparse.Namespace, cfg: Config, device: torch.device) -> dict:
    samples = benchmark_samples(args.data, args.limit)
    # The specification's 4 workers on a 2-core machine is what the baseline measures: no need for the warning.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    loader = DataLoader(
        FerDataset(samples, v1_train_transform(cfg)),
        batch_size=32,
        shuffle=True,
        num_workers=4,
        pin_memory=device.type == "cuda",
        drop_last=True,
    )
    model = build_model(cfg, 7).to(device).train()
    step = Step(model, build_optimizer(model, cfg.updated({"batch_size": 32})), cfg, device, "fp32")

    def forever() -> Iterator:
        while True:
            for images, labels in loader:
                yield images.to(device), labels.to(device)

    stream = forever()
    result = timed_steps(step, stream, args.warmup, args.steps, device)
    stream.close()  # stops the workers, so their peak memory is counted below
    return result | {
        "batch_size": 32,
        "precision": "fp32",
        "loss_finite": step.loss_finite(),
        "peak_worker_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def run_fast(args: argparse.Namespace, cfg: Config, device: torch.device, modifiers: set[str]) -> dict:
    decoded = decode_once(benchmark_samples(args.data, args.limit))
    # The decoded set is small (FER2013: 66 MB): on a GPU it lives there, and batches never cross the bus.
    images, labels = decoded.images.to(device), decoded.labels.to(device)
    batch_size = args.batch_size or (256 if device.type == "cuda" else 32)
    cfg = cfg.updated({"batch_size": batch_size})
    precision = "bf16" if "bf16" in modifiers else resolve_precision("auto", device)
    memory_format = torch.channels_last if "channels_last" in modifiers else torch.contiguous_format
    model = build_model(cfg, 7).to(device, memory_format=memory_format).train()
    optimizer = build_optimizer(model, cfg)
    if "compile" in modifiers:
        model = torch.compile(model)
    augment = BatchAugment(cfg).to(device)
    generator = torch.Generator(device).manual_seed(0)
    step = Step(
        model,
        optimizer,
        cfg,
        device,
        precision,
        prepare=lambda x: augment(x, generator).contiguous(memory_format=memory_format),
    )

    def forever() -> Iterator:
        while True:
            order = torch.randperm(len(labels), generator=generator, device=device)
            # Whole batches only: a smaller last batch would make torch.compile and CUDA graphs recompile.
            yield from batches(images, labels, order, batch_size, device, drop_last=True)

    result = timed_steps(step, forever(), args.warmup, args.steps, device)
    return result | {
        "batch_size": batch_size,
        "lr": round(cfg.effective_lr(), 6),
        "precision": precision,
        "decode_cache_reused": decoded.reused,
        "loss_finite": step.loss_finite(),
    }


def run_variant(args: argparse.Namespace) -> dict:
    device = resolve_device("auto")
    cfg = Config(image_size=args.image_size)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    name = args.run_variant
    result = (
        run_baseline(args, cfg, device) if name == "baseline" else run_fast(args, cfg, device, set(name.split("+")[1:]))
    )
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        result["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def default_variants(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fast", "fast+channels_last", "fast+compile", "fast+channels_last+compile"]
    # On CPUs without native bf16, channels_last and torch.compile measured slower than eager fp32:
    # ask for them with --variants.
    return ["fast"]


def parse_variants(text: str | None, device: torch.device) -> list[str]:
    variants = default_variants(device) if not text else [v.strip() for v in text.split(",") if v.strip()]
    for v in variants:
        head, *mods = v.split("+")
        if head != "fast" or any(m not in MODIFIERS for m in mods):
            raise SystemExit(f"unknown variant {v!r}: use fast, optionally with +{', +'.join(MODIFIERS)}")
    return variants


def spawn(variant: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--run-variant",
        variant,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--image-size",
        str(args.image_size),
        "--data",
        args.data,
        "--limit",
        str(args.limit),
        "--batch-size",
        str(args.batch_size or 0),
    ]
    print(f"running {variant} ...", flush=True)
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        return {"error": f"exit status {done.returncode} (see the output above)"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, help="timed optimizer steps per variant (default: 5 on CPU, 50 on GPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on CPU, 10 on GPU)")
    parser.add_argument("--batch-size", type=int, default=0, help="fast path batch (default: 32 on CPU, 256 on GPU)")
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--data", default=DEFAULT_DATA, help="FER2013 image folders or CSV (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=2048, help="images to use (0: the whole training split)")
    parser.add_argument(
        "--variants",
        help="comma-separated fast variants: fast, optionally +channels_last, "
        "+compile, +bf16 (default: fast on CPU; fast with and without channels_last and compile on GPU)",
    )
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/train_throughput.json"))
    parser.add_argument("--run-variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device("auto")
    args.steps = args.steps or (50 if device.type == "cuda" else 5)
    args.warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 1)
    if args.run_variant:
        print(json.dumps(run_variant(args)))
        return

    variants = parse_variants(args.variants, device)
    samples = benchmark_samples(args.data, args.limit)
    t0 = time.perf_counter()
    first = decode_once(samples)
    t1 = time.perf_counter()
    decode_once(samples)
    decode = {
        "images": len(samples),
        "shape": list(first.images.shape),
        "first_call_s": round(t1 - t0, 2),
        "first_call_reused_cache": first.reused,
        "cached_load_s": round(time.perf_counter() - t1, 2),
        "cache_file": str(first.cache_file),
    }
    print(
        f"{machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
        f"load average before: {os.getloadavg()[0]:.1f}"
    )
    print(
        f"decode once: {len(samples)} images {tuple(first.images.shape)} in {decode['first_call_s']} s "
        f"({'cache' if first.reused else 'decoded'}), cached reload {decode['cached_load_s']} s"
    )
    load_before = os.getloadavg()
    results = {name: spawn(name, args) for name in ["baseline", *variants]}
    load_after = os.getloadavg()

    base = results["baseline"].get("images_per_s")
    print(
        f"\n{'variant':<30}{'batch':>6}{'precision':>10}{'img/s':>9}{'step ms':>10}{'x base':>8}"
        f"{'peak RSS MB':>13}{'peak CUDA MB':>14}"
    )
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<30} failed: {r['error']}")
            continue
        ratio = r["images_per_s"] / base if base else float("nan")
        r["ratio_to_baseline"] = round(ratio, 3)
        print(
            f"{name:<30}{r['batch_size']:>6}{r['precision']:>10}{r['images_per_s']:>9.2f}{r['step_ms']:>10.1f}"
            f"{ratio:>8.2f}{r['peak_rss_mb']:>13.0f}{r.get('peak_cuda_mb', float('nan')):>14.0f}"
        )
    fast = {n: r for n, r in results.items() if n != "baseline" and "images_per_s" in r}
    best = max(fast, key=lambda n: fast[n]["images_per_s"]) if fast else None
    if best and base:
        print(
            f"\nbest fast variant {best}: {fast[best]['images_per_s'] / base:.2f}x the baseline's images/s "
            f"({args.steps} timed steps each after {args.warmup} warm-up; load average {load_before[0]:.1f} -> "
            f"{load_after[0]:.1f})"
        )
    out = {
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "load_average_before": load_before,
        "load_average_after": load_after,
        "settings": {
            "steps": args.steps,
            "warmup": args.warmup,
            "image_size": args.image_size,
            "data": args.data,
            "limit": args.limit,
        },
        "decode": decode,
        "results": results,
        "best_fast_variant": best,
        "best_ratio_to_baseline": results[best].get("ratio_to_baseline") if best else None,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

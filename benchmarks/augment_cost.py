"""Per-batch cost of the photo augmentations in the batched pipeline, against the preset's chain without them.

    python benchmarks/augment_cost.py [--preset quick] [--batches 200] [--device cpu] [--json out.json]

A uint8 batch of FER2013's shape (``--batch-size`` from the preset, 48x48 grey) goes through ``BatchAugment``
(and, for the mixing variants, the batch mix the training feed applies) over and over; each variant adds one
op at the value ``quick-photos`` gives it (MixUp 0.2, CutMix 1.0, which no preset sets), and ``photos`` is
the preset ``<preset>-photos`` with all of them. Prints milliseconds per batch (median of ``--batches``) and
the ratio to the plain chain, and writes JSON with the machine and its load average (the variants take turns
batch by batch, so other jobs slow each alike).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ferkit.config import PRESETS, Config
from ferkit.data.batched import BatchAugment
from ferkit.data.transforms import build_batch_mix
from ferkit.runtime import machine_description

PHOTO_OPS = ("frame", "gamma", "blur", "noise")
FIELDS = {
    "frame": ("frame_scale", "frame_shift"),
    "gamma": ("gamma",),
    "blur": ("blur_p", "blur_sigma"),
    "noise": ("noise_p", "noise_std"),
}
MIXES = {"mixup": {"mixup_alpha": 0.2}, "cutmix": {"cutmix_alpha": 1.0}}


def variants(preset: str) -> dict[str, Config]:
    base = Config().updated(PRESETS[preset])
    photos = Config().updated(PRESETS[f"{preset}-photos"])
    out = {"chain": base}
    for op in PHOTO_OPS:
        out[f"+{op}"] = base.updated({name: getattr(photos, name) for name in FIELDS[op]})
    out.update({f"+{name}": base.updated(values) for name, values in MIXES.items()})
    out["photos"] = photos
    out["photos+mixup+cutmix"] = photos.updated({k: v for values in MIXES.values() for k, v in values.items()})
    return out


def per_batch_ms(configs: dict[str, Config], images: torch.Tensor, labels: torch.Tensor, batches: int) -> dict:
    """Median milliseconds per batch of each variant, timed in turn batch by batch, so that load from other jobs
    falls on every variant alike rather than on whichever ran while it lasted."""
    ops = {name: (BatchAugment(cfg).to(images.device), build_batch_mix(cfg, 7)) for name, cfg in configs.items()}
    generator = torch.Generator(images.device)
    times: dict[str, list[float]] = {name: [] for name in configs}
    for step in range(batches + 10):  # the first 10 warm up the allocator and kernels
        for name, (augment, mix) in ops.items():
            generator.manual_seed(step)
            sync(images.device)
            start = time.perf_counter()
            x = augment(images, generator)
            if mix is not None:
                x, _ = mix(x, labels)
            sync(images.device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t[10:]) * 1000 for name, t in times.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", choices=("quick", "bundled"))
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/augment_cost.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    configs = variants(args.preset)
    size = configs["chain"].batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (size, 1, 48, 48), dtype=torch.uint8, generator=generator).to(device)
    labels = (torch.arange(size) % 7).to(device)
    rows = per_batch_ms(configs, images, labels, args.batches)
    chain = rows["chain"]
    print(f"batched pipeline, preset {args.preset}: batch {size} of 48x48 grey to {configs['chain'].image_size}px")
    print(f"on {device}, {torch.get_num_threads()} threads\n{'variant':<22}{'ms/batch':>10}{'x chain':>9}")
    for name, ms in rows.items():
        print(f"{name:<22}{ms:>10.2f}{ms / chain:>9.2f}")
    results = {
        "preset": args.preset,
        "batch_size": size,
        "image_size": configs["chain"].image_size,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "machine": machine_description(),
        "load_average": os.getloadavg(),
        "batches": args.batches,
        "ms_per_batch": {name: round(ms, 3) for name, ms in rows.items()},
        "ratio_to_chain": {name: round(ms / chain, 3) for name, ms in rows.items()},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()

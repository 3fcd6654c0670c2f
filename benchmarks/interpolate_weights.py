"""A network between two of the same shape, its weights interpolated: a network and its fine-tune (issue 20).

    python benchmarks/interpolate_weights.py START FINETUNED A OUT.safetensors

Every floating-point tensor, BatchNorm's running statistics included, becomes (1 - A) START + A FINETUNED, in fp32
from what the files store; the rest (BatchNorm's step counter) is FINETUNED's. The result keeps FINETUNED's config
and training record (its compute is START's and the fine-tune's, which FINETUNED records) and no temperature: fit
one with ``ferkit calibrate``. Weights a fine-tune moved only a little stay in the same basin as where it started,
so the points between may read better than either end (WiSE-FT, Wortsman et al. 2022); two networks trained apart
would not average to anything useful.
"""

from __future__ import annotations

import argparse

import torch

from ferkit.checkpoint import read_checkpoint, save_weights
from ferkit.errors import FerkitError


def interpolate(start: str, finetuned: str, a: float) -> dict:
    first, second = read_checkpoint(start), read_checkpoint(finetuned)
    shape = {k: v for k, v in second["config"].items() if k in ("arch", "width", "hidden")}
    if {k: first["config"].get(k) for k in shape} != shape or first["model"].keys() != second["model"].keys():
        raise FerkitError(f"{start} and {finetuned} are networks of different shapes; only one shape interpolates")
    model = {
        k: torch.lerp(first["model"][k].float(), v.float(), a) if v.is_floating_point() else v
        for k, v in second["model"].items()
    }
    out = {k: v for k, v in second.items() if k != "temperature"} | {"model": model}
    return out | {"source": f"{second.get('source', finetuned)} at {a:g} from {first.get('source', start)}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("start", help="the network the fine-tune started from (.pth or .safetensors)")
    parser.add_argument("finetuned", help="the fine-tuned network")
    parser.add_argument("a", type=float, help="0: START, 1: FINETUNED")
    parser.add_argument("out", help="the .safetensors file to write")
    args = parser.parse_args()
    save_weights(interpolate(args.start, args.finetuned, args.a), args.out)
    print(f"wrote {args.out}: {1 - args.a:g} {args.start} + {args.a:g} {args.finetuned}")


if __name__ == "__main__":
    main()

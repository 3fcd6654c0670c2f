"""What the label cache saves: the teachers' labelling of a training set, computed and then read back, as two runs
of the same preset (two seeds) meet it.

    python benchmarks/label_cache.py [--data DIR] [--preset quick] [--json out.json]

The preset's teachers (``quick``: the bundled model) label the training images as ``ferkit train`` does before its
first epoch, into an empty cache folder; then the same call reads them from it. Prints both times and writes JSON.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import DEFAULT_DATA, RESULTS, write_report  # benchmarks/common.py (benchmarks/ is on sys.path)

from ferkit.config import PRESETS, Config
from ferkit.data.datasets import load_splits
from ferkit.runtime import Speed
from ferkit.training.distill import soft_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--preset", default="quick", choices=[p for p in PRESETS if PRESETS[p].get("distill_from")])
    parser.add_argument("--json", type=Path, default=RESULTS / "label_cache.json")
    args = parser.parse_args()
    splits = load_splits(args.data)
    seconds, pflop = [], []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Config.from_dict({**PRESETS[args.preset], "label_cache": f"{tmp}/cache", "workers": 1})
        speed = Speed.resolve(cfg)
        for run in ("first", "second"):
            cfg = Config.from_dict({**cfg.to_dict(), "out": f"{tmp}/{run}"})
            Path(cfg.out).mkdir()
            start = time.perf_counter()
            _, spent = soft_targets(splits.train, splits.classes, cfg, speed, resume=False)
            seconds.append(round(time.perf_counter() - start, 2))
            pflop.append(round(spent, 4))
    report = {
        "preset": args.preset,
        "images": len(splits.train),
        "threads": torch.get_num_threads(),
        "labelled_s": seconds[0],
        "read_from_cache_s": seconds[1],
        "pflop_counted": pflop,
    }
    print(report)
    write_report(args.json, **report)


if __name__ == "__main__":
    main()

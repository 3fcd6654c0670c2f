"""Time to the first answer of ``ferkit predict PHOTO`` in a fresh process: imports, loading the bundled model and
the detector, reading one photo; per source tree given, the runs interleaved so load on the machine falls on all.

    python benchmarks/cli_startup.py [--src DIR ...] [--repeats 7] [--json out.json]

Each ``--src`` is a ``src`` folder holding a ``ferkit`` package (default: this checkout's), so two commits can be
compared side by side (``git worktree add /tmp/old COMMIT``, then ``--src src /tmp/old/src``). The photo is
scikit-image's astronaut as a JPEG. Also times ``ferkit --help`` and ``ferkit predict --help`` (the parsers alone).
Prints the medians and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import source_commit  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from PIL import Image
from skimage.data import astronaut

from ferkit.runtime import machine_description

ROOT = Path(__file__).resolve().parent.parent


def seconds(src: Path, argv: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ferkit", *argv], env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, nargs="+", default=[ROOT / "src"])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/cli_startup.json")
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        photo = Path(tmp) / "astronaut.jpg"
        Image.fromarray(astronaut()).save(photo)
        commands = {
            "predict a photo": ["predict", str(photo)],
            "--help": ["--help"],
            "predict --help": ["predict", "--help"],
        }
        times = {(str(src), what): [] for src in args.src for what in commands}
        for src in args.src:  # a first run of each warms the file cache, uncounted
            seconds(src, commands["predict a photo"])
        for _ in range(args.repeats):
            for src in args.src:
                for what, argv in commands.items():
                    times[str(src), what].append(seconds(src, argv))
    report = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "repeats": args.repeats,
        "commits": {str(src): source_commit(src) for src in args.src},
        "median_s": {
            str(src): {what: round(statistics.median(times[str(src), what]), 3) for what in commands}
            for src in args.src
        },
        "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
    }
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

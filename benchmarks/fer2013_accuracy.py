"""Accuracy of a finished training run on FER2013, under both protocols, with and without flip TTA.

    python benchmarks/fer2013_accuracy.py runs/quick [--data ../shared/data/fer2013] [--json out.json]

Reads the run's best.pth (selected on PublicTest when the run used the clean protocol) and
measures it on PrivateTest (clean protocol's figure), on PublicTest, and on the whole test/
(the specification's protocol: for a run whose selection split differs, this is the test/
accuracy of the clean-selected checkpoint, a lower bound of the spec protocol's optimistic
figure). Prints the figures and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ferkit.evaluate import evaluate_checkpoint

DEFAULT_DATA = os.environ.get("FERKIT_DATA", str(Path(__file__).resolve().parents[2] / "shared/data/fer2013"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a training run folder holding best.pth and report.json")
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="where to write the results (default: RUN/benchmark_accuracy.json)")
    args = parser.parse_args()

    ckpt = args.run / "best.pth"
    report = json.loads((args.run / "report.json").read_text())
    cases = [("PrivateTest", "clean", "report", "none"), ("PrivateTest", "clean", "report", "flip"),
             ("PublicTest", "clean", "select", "none"), ("test (spec protocol)", "spec", "report", "none")]
    results = []
    for name, protocol, split, tta in cases:
        t0 = time.perf_counter()
        m = evaluate_checkpoint(ckpt, data=args.data, split=split, protocol=protocol, tta=tta,
                                workers=args.workers, out_dir=args.run / "benchmark")
        row = {"split": name, "protocol": protocol, "tta": tta, "images": m["images"],
               "accuracy": m["accuracy"], "macro_f1": m["macro_f1"], "confusion_matrix": m["confusion_matrix"],
               "seconds": round(time.perf_counter() - t0, 1)}
        results.append(row)
        print(f"{name:<22} TTA {tta:<5} images {row['images']:>5}  accuracy {row['accuracy']:.4f}  "
              f"macro-F1 {row['macro_f1']:.4f}")
    out = {
        "run": str(args.run), "checkpoint": str(ckpt), "best_epoch": report["best_epoch"],
        "epochs": report["epochs"], "train_seconds": report["train_seconds"],
        "config": torch.load(ckpt, weights_only=True)["config"],
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "torch": torch.__version__},
        "results": results,
    }
    path = args.json or args.run / "benchmark_accuracy.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

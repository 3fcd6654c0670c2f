"""Accuracy of a finished training run on FER2013, under both protocols, with and without flip TTA.

    python benchmarks/fer2013_accuracy.py runs/quick [--data ../shared/data/fer2013] [--json out.json]
    python benchmarks/fer2013_accuracy.py bundled      # the model shipped inside ferkit
    python benchmarks/fer2013_accuracy.py fer2013_resnet18.int8        # its int8 twin, also bundled

Measures the run's best.pth (or a given .pth/.safetensors/.onnx file, or the bundled model) on
PrivateTest (the clean protocol's figure when the run selected on PublicTest), on PublicTest, and on
the whole test/ (PublicTest + PrivateTest: the specification's protocol, exact when the run selected
on test/ or had a single epoch, otherwise the test/ accuracy of the clean-selected checkpoint).
Prints the figures and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

from ferkit.checkpoint import check_classes, model_path
from ferkit.data.datasets import FerDataset, load_splits
from ferkit.data.loaders import make_loader
from ferkit.data.preprocess import build_test_transform
from ferkit.evaluation.metrics import compute_metrics
from ferkit.evaluation.predictions import collect_probs, inference_precision
from ferkit.inference.loading import load_for_inference
from ferkit.runtime import machine_description, resolve_device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run", type=Path, help="a training run folder holding best.pth and report.json, a checkpoint file, or 'bundled'"
    )
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="where to write the results (default: RUN/benchmark_accuracy.json)")
    args = parser.parse_args()

    bundled = str(args.run) == "bundled"
    ckpt = model_path(None if bundled else args.run)
    loaded = load_for_inference(ckpt)
    cfg, classes = loaded.config, loaded.classes
    splits = load_splits(args.data, "clean")
    check_classes(ckpt, classes, splits.classes)
    device = resolve_device(loaded.device)
    precision = inference_precision(loaded.model, cfg)
    model = loaded.model.to(device)
    transform = build_test_transform(cfg)

    def probs_of(samples, tta):
        t0 = time.perf_counter()
        loader = make_loader(FerDataset(samples, transform), 256, args.workers, device)
        probs, labels = collect_probs(model, loader, device, precision, tta)
        return probs, labels, time.perf_counter() - t0

    private, public = probs_of(splits.report, "none"), probs_of(splits.select, "none")
    private_flip = probs_of(splits.report, "flip")
    cases = {
        ("PrivateTest", "clean", "none"): private,
        ("PrivateTest", "clean", "flip"): private_flip,
        ("PublicTest", "selection", "none"): public,
        ("test (Public+Private)", "spec", "none"): (
            np.concatenate([public[0], private[0]]),
            np.concatenate([public[1], private[1]]),
            public[2] + private[2],
        ),
    }
    results = []
    for (name, protocol, tta), (probs, labels, seconds) in cases.items():
        m = compute_metrics(labels, probs, classes)
        results.append(
            {
                "split": name,
                "protocol": protocol,
                "tta": tta,
                "images": m["images"],
                "accuracy": m["accuracy"],
                "macro_f1": m["macro_f1"],
                "per_class": m["per_class"],
                "confusion_matrix": m["confusion_matrix"],
                "eval_seconds": round(seconds, 1),
            }
        )
        print(
            f"{name:<22} {protocol:<9} TTA {tta:<5} images {m['images']:>5}  accuracy {m['accuracy']:.4f}  "
            f"macro-F1 {m['macro_f1']:.4f}"
        )
    report_file = args.run / "report.json"
    report = json.loads(report_file.read_text()) if report_file.is_file() else {}
    out = {
        "run": str(args.run),
        "checkpoint": str(ckpt),
        "best_epoch": report.get("best_epoch"),
        "epochs": report.get("epochs"),
        "train_minutes": report.get("train_minutes"),
        "config": cfg.to_dict(),
        "machine": {
            "description": machine_description(),
            "torch": torch.__version__,
            "device": str(device),
            "precision": precision,
        },
        "results": results,
    }
    default = (
        args.run / "benchmark_accuracy.json"
        if args.run.is_dir()
        else Path("benchmarks/results") / f"accuracy_{'bundled' if bundled else ckpt.stem}.json"
    )
    path = args.json or default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

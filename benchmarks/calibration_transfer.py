"""Calibration and cross-dataset figures of a model file (default: both bundled models), through ferkit's own code.

    python benchmarks/calibration_transfer.py [fer2013_resnet18 fer2013_resnet18.int8] [--data ../shared/data]

Per model: PublicTest (where ``ferkit calibrate`` fits T) and PrivateTest at T = 1 and at the stored T
(accuracy, NLL, ECE with 15 bins), then ``ferkit evaluate``'s figures on webfaces-dev (macro recall over the
classes with >= 50 photos, as its README asks) and CK+48 (the 6 classes FER2013 shares; contempt left out).
Prints the figures and writes benchmarks/results/calibration_transfer.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from dataclasses import replace
from pathlib import Path

from ferkit.data.datasets import load_splits
from ferkit.evaluation.calibration import temper
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference.evaluate import evaluate_checkpoint, sample_probs
from ferkit.inference.loading import load_for_inference
from ferkit.runtime import machine_description

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
# The webfaces-dev README's five well-filled classes: Fear (5) and Disgust (2) are too few to read.
WEBFACES_MIN_SUPPORT = 50
KEPT = ("images", "accuracy", "macro_recall", "macro_classes", "ece", "loss", "temperature", "left_out", "split")


def calibration(model: str, fer2013: Path, workers: int) -> dict:
    loaded = load_for_inference(model)
    raw = replace(loaded, model=loaded.model.model, temperature=1.0)
    splits = load_splits(fer2013, "clean")
    rows = {}
    for split, samples in (("PublicTest", splits.select), ("PrivateTest", splits.report)):
        probs, labels, precision = sample_probs(raw, samples, 256, workers, None, "none")
        for temperature in (1.0, loaded.temperature):
            m = compute_metrics(labels, temper(probs, temperature), loaded.classes)
            rows[f"{split} T={temperature:.4f}"] = {k: m[k] for k in ("images", "accuracy", "loss", "ece")}
            print(
                f"{model:<24} {split:<11} {precision:<5} T {temperature:.4f}  accuracy {m['accuracy']:.4f}  "
                f"NLL {m['loss']:.4f}  ECE {m['ece']:.4f}"
            )
    return {"temperature": loaded.temperature, "precision": precision, "fer2013": rows}


def transfer(model: str, folder: Path, workers: int, min_support: int) -> dict:
    m = evaluate_checkpoint(model, data=str(folder), workers=workers, min_support=min_support)
    recall = {c: round(v["recall"], 3) for c, v in m["per_class"].items() if v["support"]}
    print(
        f"{model:<24} {folder.name:<11} images {m['images']}  accuracy {m['accuracy']:.4f}  "
        f"macro recall {m['macro_recall']:.4f} ({len(m['macro_classes'])} classes)  recall {recall}"
    )
    return {k: m[k] for k in KEPT} | {"per_class_recall": recall, "min_support": min_support}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=["fer2013_resnet18", "fer2013_resnet18.int8"])
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding fer2013, webfaces-dev, ckplus48")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/calibration_transfer.json"))
    args = parser.parse_args()
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if "Model name" in line), "")
    flags = next((line.split(":", 1)[1].split() for line in lscpu.splitlines() if line.startswith("Flags")), [])
    results = {
        "machine": {
            "description": machine_description(),
            "lscpu_model_name": model_name,
            "flags": [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags],
        },
        "models": {},
    }
    for model in args.models:
        results["models"][model] = calibration(model, args.data / "fer2013", args.workers) | {
            "webfaces-dev": transfer(model, args.data / "webfaces-dev", args.workers, WEBFACES_MIN_SUPPORT),
            "ckplus48": transfer(model, args.data / "ckplus48", args.workers, 1),
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

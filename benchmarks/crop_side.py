"""How large should the aligned face crop be? The side of `ferkit predict`'s crop, swept on real photos and FER2013.

    python benchmarks/crop_side.py                                      # the bundled model
    python benchmarks/crop_side.py --checkpoint runs/x/best.pth --name x --limit 500

ferkit frames each detected face as FER2013's faces are framed (``ferkit.inference.align``): the side of the
square is a multiple of the face's unit (the mean of the eye distance and the eye-to-mouth distance), 0.9 of the
median FER2013 framing (2.663 units) since it was chosen on PublicTest alone. Here every photo is detected once
and its largest face cut at each side, then classified:
- webfaces-dev (real photos, the product's use): accuracy, macro recall and per-class recall over the classes
  with at least 50 photos;
- FER2013 PublicTest (the selection split) enlarged to 192 px, as the side was first chosen.
A photo where no face is found is read whole at every side (as ``ferkit evaluate --faces detected`` does). Never
run on PrivateTest: the side is a choice. Writes ``benchmarks/results/crop_side_NAME.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from PIL import Image

from ferkit.data.datasets import load_image, load_splits, read_whole_folder
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference import Predictor
from ferkit.inference.align import FER2013, FER2013_MEDIAN, aligned_crop
from ferkit.inference.faces import build_detector
from ferkit.runtime import machine_description

RESULTS = Path(__file__).resolve().parent / "results"
MEDIAN_SIDE = FER2013_MEDIAN.side
FACTORS = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.15, 1.2)
MIN_SUPPORT = 50


def photos(samples, enlarge: int | None):
    for sample in samples:
        image = load_image(sample).convert("RGB")
        yield np.asarray(image.resize((enlarge, enlarge), Image.BICUBIC) if enlarge else image)


def sweep(predictor: Predictor, samples, enlarge: int | None = None, batch: int = 256) -> dict:
    """Per side factor, the metrics of ``samples`` read through detection and an aligned crop of that side."""
    detector = build_detector()
    probs = {f: [] for f in FACTORS}
    found = 0
    for start in range(0, len(samples), batch):  # a batch of photos at a time: the crops of all would fill memory
        crops = {f: [] for f in FACTORS}
        for rgb in photos(samples[start : start + batch], enlarge):
            faces = detector.detect(rgb)
            found += bool(faces)
            for f in FACTORS:
                framing = replace(FER2013_MEDIAN, side=MEDIAN_SIDE * f)
                crops[f].append(aligned_crop(rgb, faces[0].landmarks, framing) if faces else rgb)
        for f in FACTORS:
            probs[f].append(predictor.classify(crops[f]))
    labels = np.array([s.label for s in samples])
    figures = {"images": len(samples), "faces_found": found}
    for f in FACTORS:
        m = compute_metrics(labels, np.concatenate(probs[f]), predictor.classes, MIN_SUPPORT)
        figures[f"{f:.2f}"] = {
            "side_units": round(MEDIAN_SIDE * f, 3),
            "accuracy": m["accuracy"],
            "macro_recall": m["macro_recall"],
            "recall": {c: m["per_class"][c]["recall"] for c in m["macro_classes"]},
        }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a model file (default: the bundled model)")
    parser.add_argument("--name", default="bundled", help="results go to crop_side_NAME.json")
    parser.add_argument("--data", default=DEFAULT_DATA, help="FER2013; webfaces-dev is looked for beside it")
    parser.add_argument("--limit", type=int, default=0, help="at most N photos per class of each collection")
    args = parser.parse_args()
    # The model's own class mix, as the side was chosen (on PublicTest among others).
    predictor = Predictor.from_checkpoint(args.checkpoint, prior="model")
    t0 = time.perf_counter()
    web, _ = read_whole_folder(Path(args.data).parent / "webfaces-dev", predictor.classes, args.limit)
    public = load_splits(args.data, "clean", args.limit).select
    result = {
        "checkpoint": args.checkpoint or "bundled",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "current_factor": round(FER2013.side / MEDIAN_SIDE, 3),
        "webfaces_dev": sweep(predictor, web),
        "public_test_192": sweep(predictor, public, enlarge=192),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{'side':>6} {'units':>6}  webfaces-dev acc / macro recall   per-class recall           PublicTest@192")
    for f in FACTORS:
        key = f"{f:.2f}"
        w, p = result["webfaces_dev"][key], result["public_test_192"][key]
        recall = " ".join(f"{c[:3]} {r:.2f}" for c, r in w["recall"].items())
        print(
            f"{f:>6.2f} {w['side_units']:>6.3f}  {w['accuracy']:.4f} / {w['macro_recall']:.4f}"
            f"   {recall}   {p['accuracy']:.4f}"
        )
    path = RESULTS / f"crop_side_{args.name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()

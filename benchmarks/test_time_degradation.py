"""Is the gap between FER2013 and real photos in their pixels' fineness? Web photos softened at reading time.

    python benchmarks/test_time_degradation.py                      # the bundled model
    python benchmarks/test_time_degradation.py --checkpoint runs/x/best.pth --name x

FER2013's faces are web thumbnails enlarged to 48x48; webfaces-dev's are sharp 350x350 photos shrunk to the model's
size. If the model read web photos otherwise for that reason alone, softening them to FER2013's fineness at reading
time (a Gaussian blur, or a detour through a smaller size) would read them nearer their labels. Each photo is taken
whole as the face, made grey and resized to the model's input as the test pipeline does, then softened; PublicTest
goes through the same softening beside it (what it costs on FER2013). Figures: accuracy on PublicTest; accuracy,
five-class macro recall and per-class recall on webfaces-dev, with the model's own class mix and with
``--prior photos`` (as ``ferkit predict`` reads). Writes ``benchmarks/results/test_time_degradation_NAME.json``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_DATA, write_result
from PIL import Image, ImageFilter

from ferkit.data.datasets import load_image, load_splits, read_whole_folder
from ferkit.data.preprocess import resize
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference import Predictor
from ferkit.runtime import machine_description

MIN_SUPPORT = 50


def _blurred(sigma: float) -> Callable[[np.ndarray], np.ndarray]:
    return lambda grey: np.asarray(Image.fromarray(grey).filter(ImageFilter.GaussianBlur(sigma)))


def _through(side: int) -> Callable[[np.ndarray], np.ndarray]:
    def soften(grey: np.ndarray) -> np.ndarray:
        small = Image.fromarray(grey).resize((side, side), Image.Resampling.BILINEAR)
        return np.asarray(small.resize(grey.shape[::-1], Image.Resampling.BILINEAR))

    return soften


SOFTENINGS = {
    "none": lambda grey: grey,
    "blur 0.5": _blurred(0.5),
    "blur 0.8": _blurred(0.8),
    "through 32": _through(32),
    "through 24": _through(24),
}


def _inputs(samples: list, size: int) -> list[np.ndarray]:
    """Each image grey at the model's input size, resized as the test pipeline resizes."""
    out = []
    for sample in samples:
        grey = torch.from_numpy(np.array(load_image(sample).convert("L"), dtype=np.uint8))[None]
        out.append(resize(grey, size)[0].numpy())
    return out


def measure(checkpoint: str | None, data: Path, webfaces: Path) -> dict:
    readers = {prior: Predictor.from_checkpoint(checkpoint, prior=prior) for prior in ("model", "photos")}
    classes = readers["model"].classes
    size = readers["model"].config.image_size
    public = load_splits(data, "clean").select
    photos, _ = read_whole_folder(webfaces, tuple(classes))
    grey = {"PublicTest": _inputs(public, size), "webfaces-dev": _inputs(photos, size)}
    labels = {"PublicTest": np.array([s.label for s in public]), "webfaces-dev": np.array([s.label for s in photos])}
    figures = {}
    for name, soften in SOFTENINGS.items():
        row = {}
        for prior, predictor in readers.items():
            for split in ("PublicTest", "webfaces-dev") if prior == "model" else ("webfaces-dev",):
                crops = [np.repeat(soften(g)[..., None], 3, axis=2) for g in grey[split]]
                m = compute_metrics(labels[split], predictor.classify(crops), classes, MIN_SUPPORT)
                key = split if split == "PublicTest" else f"{split}, prior {prior}"
                row[key] = {k: m[k] for k in ("accuracy", "macro_recall")}
                row[key]["recall"] = {c: m["per_class"][c]["recall"] for c in m["macro_classes"]}
        figures[name] = row
        own, web = row["webfaces-dev, prior model"], row["webfaces-dev, prior photos"]
        print(
            f"{name:<11} PublicTest {row['PublicTest']['accuracy']:.2%}  webfaces-dev (model's mix) "
            f"{own['accuracy']:.2%} / {own['macro_recall']:.3f}  (photos) "
            f"{web['accuracy']:.2%} / {web['macro_recall']:.3f}  "
            + " ".join(f"{c} {r:.2f}" for c, r in web["recall"].items())
        )
    return {"classes": list(classes), "images": {k: len(v) for k, v in labels.items()}, "softenings": figures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="model file or run checkpoint (default: the bundled model)")
    parser.add_argument("--name", default="bundled", help="names the result file")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA), help="FER2013 (its PublicTest is read)")
    parser.add_argument("--webfaces", type=Path, default=Path(DEFAULT_DATA).parent / "webfaces-dev")
    args = parser.parse_args()
    started = time.perf_counter()
    result = measure(args.checkpoint, args.data, args.webfaces)
    result |= {
        "checkpoint": args.checkpoint or "bundled",
        "machine": machine_description(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = write_result(f"test_time_degradation_{args.name}", result)
    print(f"{result['machine']}, {result['seconds']} s; wrote {path}")


if __name__ == "__main__":
    main()

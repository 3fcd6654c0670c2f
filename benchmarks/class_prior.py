"""What reading a model for another class mix (``--prior``) does on each collection: FER2013, real photos, CK+48.

    python benchmarks/class_prior.py                                   # the bundled model, priors model and photos
    python benchmarks/class_prior.py --checkpoint runs/x/best.pth --name x --priors model photos uniform

For each prior (:mod:`ferkit.evaluation.prior`), the model is measured as ``ferkit evaluate --prior P`` measures it
on FER2013 PrivateTest (the clean protocol's report split), webfaces-dev taken whole and as ``ferkit predict`` reads
it (``--faces detected``), and CK+48: accuracy, macro recall (webfaces-dev: the five classes with at least 50
photos), per-class recall, ECE, and how often each class is predicted. Writes
``benchmarks/results/class_prior_NAME.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, write_result  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

from ferkit.evaluation.prior import PRIORS
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.inference.faces import build_detector
from ferkit.runtime import machine_description


def collections(root: Path) -> dict[str, dict]:
    """evaluate_checkpoint's arguments for each collection, by name."""
    webfaces = {"data": str(root / "webfaces-dev"), "min_support": 50}
    return {
        "fer2013_privatetest": {"data": str(root / "fer2013"), "split": "report", "protocol": "clean"},
        "webfaces_whole": webfaces,
        "webfaces_detected": {**webfaces, "detector": build_detector()},
        "ckplus48": {"data": str(root / "ckplus48")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a model file (default: the bundled model)")
    parser.add_argument("--name", default="bundled", help="names the JSON")
    parser.add_argument("--priors", nargs="+", default=["model", "photos"], help=f"any of {', '.join(PRIORS)}")
    parser.add_argument("--data", type=Path, default=Path(DEFAULT_DATA).parent, help="the folder of the collections")
    args = parser.parse_args()

    t0 = time.perf_counter()
    figures: dict[str, dict] = {}
    for name, kwargs in collections(args.data).items():
        figures[name] = {}
        for prior in args.priors:
            m = evaluate_checkpoint(args.checkpoint, workers=0, prior=prior, **kwargs)
            predicted = np.array(m["confusion_matrix"]).sum(axis=0)
            figures[name][prior] = {
                "images": m["images"],
                "precision": m["precision"],
                "accuracy": m["accuracy"],
                "macro_recall": m["macro_recall"],
                "ece": m["ece"],
                "recall": {c: m["per_class"][c]["recall"] for c in m["macro_classes"]},
                "predicted": dict(zip(m["per_class"], predicted.tolist())),
            }
            f = figures[name][prior]
            figure = f"acc {f['accuracy']:.4f}  macro recall {f['macro_recall']:.4f}  ECE {f['ece']:.4f}"
            print(f"{name:<20} {prior:<8} {figure}")
            print(f"{'':<29}recall " + "  ".join(f"{c} {r:.3f}" for c, r in f["recall"].items()))
    result = {
        "name": args.name,
        "checkpoint": args.checkpoint or "bundled",
        "priors": args.priors,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "collections": figures,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    path = write_result(f"class_prior_{args.name}", result)
    print(f"wrote {path} ({result['seconds']} s)")


if __name__ == "__main__":
    main()

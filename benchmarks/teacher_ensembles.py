"""Which finished runs teach best together? Each model's and each average's PublicTest and webfaces-dev figures.

    python benchmarks/teacher_ensembles.py NAME=CHECKPOINT NAME=CHECKPOINT ... [--size 3] [--out NAME]

Distillation (``--distill-from A B ...``) trains on the average of its teachers' calibrated probabilities, so
the average is what to measure before paying for a run: for every combination of up to ``--size`` of the given
models, the mean of their probabilities (each at its stored temperature, as distillation reads them) scored on
PublicTest (accuracy; FER2013's selection split) and on webfaces-dev taken whole (accuracy and macro recall over
its classes with at least 50 photos): the two figures issue 20 chooses recipes by. PrivateTest and CK+48 are not
read: a teacher is chosen, and so may not be chosen on them. Writes ``benchmarks/results/teacher_ensembles_NAME.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

from ferkit.config import EVAL_BATCH_SIZE
from ferkit.data.datasets import load_splits, read_whole_folder
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference.evaluate import sample_probs
from ferkit.inference.loading import load_for_inference
from ferkit.runtime import machine_description

RESULTS = Path(__file__).resolve().parent / "results"
MIN_SUPPORT = 50  # webfaces-dev's five well-filled classes, as framing_robustness.py and issue 20 count them


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", metavar="NAME=CHECKPOINT")
    parser.add_argument("--size", type=int, default=3, help="largest number of models averaged")
    parser.add_argument("--data", default=DEFAULT_DATA, help="FER2013 (its PublicTest is read)")
    parser.add_argument("--photos", default=str(Path(DEFAULT_DATA).parent / "webfaces-dev"))
    parser.add_argument("--out", default="candidates", help="the JSON's name")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.models)

    t0 = time.perf_counter()
    splits = load_splits(args.data, "clean")
    photos, _ = read_whole_folder(Path(args.photos), splits.classes)
    sets = {"PublicTest": splits.select, "webfaces-dev": photos}
    probs, labels = {}, {}
    for name, path in models.items():
        loaded = load_for_inference(path)
        for split, samples in sets.items():
            probs[name, split], labels[split], _ = sample_probs(loaded, samples, EVAL_BATCH_SIZE, 1, "fp32", "none")
        print(f"read {name} ({path})", flush=True)

    rows = []
    for k in range(1, min(args.size, len(models)) + 1):
        for combo in itertools.combinations(models, k):
            public, web = (
                compute_metrics(labels[s], np.mean([probs[n, s] for n in combo], axis=0), splits.classes, support)
                for s, support in (("PublicTest", 1), ("webfaces-dev", MIN_SUPPORT))
            )
            rows.append(
                {
                    "models": list(combo),
                    "public_accuracy": public["accuracy"],
                    "webfaces_accuracy": web["accuracy"],
                    "webfaces_macro_recall": web["macro_recall"],
                    "webfaces_recall": {c: web["per_class"][c]["recall"] for c in web["macro_classes"]},
                }
            )
            print(
                f"{' + '.join(combo):72s} PublicTest {public['accuracy']:.2%}   webfaces-dev "
                f"{web['accuracy']:.2%} / {web['macro_recall']:.3f}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"teacher_ensembles_{args.out}.json"
    result = {
        "command": "python benchmarks/teacher_ensembles.py " + " ".join(args.models) + f" --size {args.size}",
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "models": models,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

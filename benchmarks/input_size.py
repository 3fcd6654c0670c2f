"""A model read at input sizes other than the one it was trained at (FixRes: training crops zoom in, so a face at
test time looks smaller than the faces it learnt from; a slightly larger input might make up for it).

    python benchmarks/input_size.py [--checkpoint CKPT] [--sizes 44 48 52 56]

For each size: FER2013 PublicTest accuracy (the split that may choose) and webfaces-dev five-class macro recall and
accuracy (whole photos, the model's own class mix). Prints a table and writes
``benchmarks/results/input_size.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from common import DEFAULT_DATA, RESULTS, write_report

from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference.evaluate import evaluation_samples, sample_probs
from ferkit.inference.loading import load_for_inference

WEBFACES = str(Path(DEFAULT_DATA).parent / "webfaces-dev")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="default: the model bundled with ferkit")
    parser.add_argument("--sizes", type=int, nargs="+", default=[44, 48, 52, 56])
    parser.add_argument("--data", default=DEFAULT_DATA)
    parser.add_argument("--webfaces", default=WEBFACES)
    parser.add_argument("--json", type=Path, default=RESULTS / "input_size.json")
    args = parser.parse_args()
    loaded = load_for_inference(args.checkpoint, prior="model")
    rows = {size: {} for size in args.sizes}
    readings = (("publictest", args.data, "select", 1), ("webfaces", args.webfaces, "report", 50))
    for name, data, split, support in readings:
        samples = evaluation_samples(loaded, data, split, None, 0)[0]
        for size in args.sizes:
            resized = dataclasses.replace(loaded, config=loaded.config.updated({"image_size": size}))
            probs, labels, _ = sample_probs(resized, samples, 256, 0, None, "none")
            metrics = compute_metrics(labels, probs, loaded.classes, support)
            rows[size][name] = {"accuracy": metrics["accuracy"], "macro_recall": metrics["macro_recall"]}
    print(f"{'size':>5}  {'PublicTest':>10}  {'webfaces macro recall':>21}  {'webfaces acc':>12}")
    for size, row in rows.items():
        pub, web = row["publictest"], row["webfaces"]
        trained = " (trained)" if size == loaded.config.image_size else ""
        print(
            f"{size:>5}  {100 * pub['accuracy']:>9.2f}%  {web['macro_recall']:>21.3f}  "
            f"{100 * web['accuracy']:>11.2f}%{trained}"
        )
    write_report(args.json, checkpoint=str(loaded.source), trained_size=loaded.config.image_size, sizes=rows)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""Two models read on the same images: the difference in accuracy and macro recall, with a 95% interval over
bootstrap draws of the images shared by both.

    python benchmarks/paired_accuracy.py CANDIDATE SHIPPED --name NAME                    # PublicTest (selection)
    python benchmarks/paired_accuracy.py CANDIDATE SHIPPED --name NAME --data ../shared/data/webfaces-dev \\
        --faces detected --prior photos --min-support 50                                # as `ferkit predict` reads

Two accuracies of about 69% on PublicTest's 3,589 images each have a standard error near 0.77 point, yet most images
are read alike by both models: on the same draws the images' own difficulty cancels and the interval of the
difference is several times narrower than either model's, so a rule can ask whether a candidate is better, worse or
indistinguishable. With ``--faces detected`` each photo's face is found once and both models read that crop.
Writes ``benchmarks/results/paired_accuracy_NAME.json``.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import DEFAULT_DATA, write_result  # benchmarks/common.py, on sys.path as scripts run

from ferkit.config import Config
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference.evaluate import SPLITS, detected_faces, evaluation_samples, sample_probs
from ferkit.inference.faces import build_detector
from ferkit.inference.loading import load_for_inference
from ferkit.runtime import machine_description

DRAWS = 2000


def macro_recall(labels: np.ndarray, predicted: np.ndarray, classes: np.ndarray) -> float:
    return float(np.mean([(predicted[labels == c] == c).mean() for c in classes]))


def paired(labels: np.ndarray, a: np.ndarray, b: np.ndarray, classes: np.ndarray, seed: int = 0) -> dict:
    """``a``'s accuracy and macro recall (over ``classes``) minus ``b``'s, each with its 95% interval over
    draws of the images, the same draws for both models."""
    rng = np.random.default_rng(seed)
    accuracy, recall = [], []
    for _ in range(DRAWS):
        pick = rng.integers(0, len(labels), len(labels))
        y, pa, pb = labels[pick], a[pick], b[pick]
        accuracy.append((pa == y).mean() - (pb == y).mean())
        present = np.array([c for c in classes if (y == c).any()])  # a rare class may miss a draw
        recall.append(macro_recall(y, pa, present) - macro_recall(y, pb, present))

    def interval(values: list[float]) -> list[float]:
        return [float(v) for v in np.percentile(values, [2.5, 97.5])]

    return {
        "accuracy": float((a == labels).mean() - (b == labels).mean()),
        "accuracy_95": interval(accuracy),
        "macro_recall": macro_recall(labels, a, classes) - macro_recall(labels, b, classes),
        "macro_recall_95": interval(recall),
        "read_differently": float((a != b).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidate", help="a model file (.pth, .safetensors, .onnx) or a bundled model's name")
    parser.add_argument("shipped", help="the model it is compared with")
    parser.add_argument("--name", required=True, help="result name: benchmarks/results/paired_accuracy_NAME.json")
    parser.add_argument("--data", default=DEFAULT_DATA, help="a dataset, or a folder of class folders read whole")
    parser.add_argument("--split", choices=SPLITS, default="select", help="of a dataset with splits")
    parser.add_argument("--faces", choices=("given", "detected"), default="given")
    parser.add_argument("--prior", default="model", help="the class mix both models are read for (--prior)")
    parser.add_argument("--min-support", type=int, default=1, help="macro recall over classes with this many images")
    parser.add_argument("--workers", type=int, default=Config.workers)
    args = parser.parse_args()

    models = [load_for_inference(m, prior=args.prior) for m in (args.candidate, args.shipped)]
    if models[0].classes != models[1].classes:
        raise SystemExit(f"the two models have different classes: {models[0].classes} and {models[1].classes}")
    classes = models[0].classes
    samples, split, _, left_out = evaluation_samples(models[0], args.data, args.split)
    found = None
    if args.faces == "detected":
        samples, found = detected_faces(samples, build_detector())
    figures, predicted = {}, []
    for label, model in zip(("candidate", "shipped"), models):
        probs, labels, precision = sample_probs(model, samples, 256, args.workers, None, "none")
        metrics = compute_metrics(labels, probs, classes, args.min_support)
        figures[label] = {
            "model": str(model.source),
            "accuracy": metrics["accuracy"],
            "macro_recall": metrics["macro_recall"],
            "precision": precision,
        }
        predicted.append(probs.argmax(1))
    support = np.bincount(labels, minlength=len(classes))
    macro = np.flatnonzero(support >= args.min_support)
    difference = paired(labels, predicted[0], predicted[1], macro)
    result = {
        "name": args.name,
        "data": args.data,
        "split": split,
        "images": len(labels),
        "faces": args.faces,
        "faces_found": found,
        "prior": args.prior,
        "left_out": left_out,
        "macro_classes": [classes[c] for c in macro],
        **figures,
        "candidate_minus_shipped": difference,
        "draws": DRAWS,
        "machine": machine_description(),
    }
    path = write_result(f"paired_accuracy_{args.name}", result)
    a, r = difference["accuracy_95"], difference["macro_recall_95"]
    print(
        f"{split} ({len(labels)} images, faces {args.faces}, prior {args.prior}): candidate "
        f"{figures['candidate']['accuracy']:.2%} / {figures['candidate']['macro_recall']:.3f}, shipped "
        f"{figures['shipped']['accuracy']:.2%} / {figures['shipped']['macro_recall']:.3f} (accuracy / macro recall); "
        f"difference {difference['accuracy']:+.2%} (95% {a[0]:+.2%} to {a[1]:+.2%}), macro recall "
        f"{difference['macro_recall']:+.3f} ({r[0]:+.3f} to {r[1]:+.3f}); {difference['read_differently']:.1%} of "
        f"images read differently; wrote {path}"
    )


if __name__ == "__main__":
    main()

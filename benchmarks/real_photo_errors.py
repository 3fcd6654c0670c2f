"""Where a model goes wrong on real photos, and whether its scores or only its decisions are at fault.

    python benchmarks/real_photo_errors.py                                  # the bundled model on webfaces-dev
    python benchmarks/real_photo_errors.py --checkpoint runs/x/best.pth --name x
    python benchmarks/real_photo_errors.py --sheets runs/sheets             # and look at the photos, as a person would

Each photo is read whole as the face (as ``ferkit evaluate --data webfaces-dev`` reads it). Beside accuracy and
the macro recall over the classes with at least 50 photos it gives:

- how often each class is predicted against how often it is the label, and the confusion matrix;
- each class's one-against-the-rest ROC AUC: how well the model's probability for a class ranks its photos above
  the others', whatever the decision;
- a **ceiling, not a model**: the per-class logit offsets that maximise the macro recall (and, apart, the
  accuracy) fitted on these same labelled photos by coordinate search. It measures how much of the shortfall a
  change of decision rule alone could remove; fitted on the photos it is measured on, it is never shipped, and
  webfaces-dev may not be trained on.

``--sheets DIR`` draws, for the largest confusions, a grid of the photos as the model sees them (its input size)
beside the photo, into DIR: photos of the collection, so never into the repository.
Writes ``benchmarks/results/real_photo_errors_NAME.json``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, write_result  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from PIL import Image
from sklearn.metrics import roc_auc_score

from ferkit.data.datasets import load_image, read_whole_folder
from ferkit.evaluation.metrics import compute_metrics
from ferkit.inference.evaluate import sample_probs
from ferkit.inference.loading import load_for_inference
from ferkit.runtime import machine_description

MIN_SUPPORT = 50
OFFSETS = np.linspace(-3, 3, 61)  # the logit offsets tried per class, in steps of 0.1
SWEEPS = 4  # coordinate search: every class's offset tried again this many times
SHEET_PHOTOS, SHEET_SIDE = 24, 128


def best_offsets(log_probs: np.ndarray, labels: np.ndarray, score) -> tuple[np.ndarray, float]:
    """Per-class offsets added to the log-probabilities that maximise ``score(predicted)``, by coordinate search."""
    offsets = np.zeros(log_probs.shape[1])
    best = score((log_probs + offsets).argmax(1))
    for _ in range(SWEEPS):
        for k in range(len(offsets)):
            for value in OFFSETS:
                trial = offsets.copy()
                trial[k] = value
                s = score((log_probs + trial).argmax(1))
                if s > best:
                    best, offsets = s, trial
    return offsets, float(best)


def recalls(predicted: np.ndarray, labels: np.ndarray, counted: list[int]) -> list[float]:
    return [float(np.mean(predicted[labels == k] == k)) for k in counted]


def draw_sheets(samples, probs, labels, classes, size: int, out: Path, pairs: int = 4) -> list[str]:
    """Grids of the photos behind the ``pairs`` largest confusions (true -> predicted), at the model's input size
    enlarged to SHEET_SIDE, so that one sees what the model was given."""
    out.mkdir(parents=True, exist_ok=True)
    predicted = probs.argmax(1)
    counts = np.zeros((len(classes), len(classes)), int)
    np.add.at(counts, (labels, predicted), 1)
    np.fill_diagonal(counts, 0)
    written = []
    rng = np.random.default_rng(0)
    for flat in np.argsort(counts, axis=None)[::-1][:pairs]:
        true, pred = divmod(int(flat), len(classes))
        chosen = np.flatnonzero((labels == true) & (predicted == pred))
        chosen = rng.choice(chosen, min(SHEET_PHOTOS, len(chosen)), replace=False)
        sheet = Image.new("L", (8 * SHEET_SIDE, -(-len(chosen) // 8) * SHEET_SIDE))
        for i, index in enumerate(chosen):
            seen = load_image(samples[index]).convert("L").resize((size, size), Image.BILINEAR)
            sheet.paste(seen.resize((SHEET_SIDE, SHEET_SIDE)), ((i % 8) * SHEET_SIDE, (i // 8) * SHEET_SIDE))
        path = out / f"{classes[true]}_read_as_{classes[pred]}.png"
        sheet.save(path)
        written.append(str(path))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a model file (default: the bundled model)")
    parser.add_argument("--name", default="bundled", help="names the JSON")
    parser.add_argument("--data", default=str(Path(DEFAULT_DATA).parent / "webfaces-dev"))
    parser.add_argument("--sheets", type=Path, help="folder for the grids of the largest confusions (not the repo)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    loaded = load_for_inference(args.checkpoint, device="cpu")
    classes = loaded.classes
    samples, left_out = read_whole_folder(Path(args.data), classes)
    probs, labels, precision = sample_probs(loaded, samples, 256, 0, None, "none")
    metrics = compute_metrics(labels, probs, classes, MIN_SUPPORT)
    counted = [classes.index(c) for c in metrics["macro_classes"]]
    log_probs = np.log(np.clip(probs, 1e-12, None))

    def macro_recall(predicted: np.ndarray) -> float:
        return float(np.mean(recalls(predicted, labels, counted)))

    recall_offsets, recall_ceiling = best_offsets(log_probs, labels, macro_recall)
    accuracy_offsets, accuracy_ceiling = best_offsets(log_probs, labels, lambda p: float(np.mean(p == labels)))
    at_recall_ceiling = (log_probs + recall_offsets).argmax(1)
    result = {
        "name": args.name,
        "checkpoint": str(loaded.source),
        "data": args.data,
        "left_out": left_out,
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "precision": precision,
        "images": int(len(labels)),
        "accuracy": metrics["accuracy"],
        "macro_recall": metrics["macro_recall"],
        "macro_classes": metrics["macro_classes"],
        "recall": {classes[k]: metrics["per_class"][classes[k]]["recall"] for k in counted},
        "labelled": dict(zip(classes, np.bincount(labels, minlength=len(classes)).tolist())),
        "predicted": dict(zip(classes, np.bincount(probs.argmax(1), minlength=len(classes)).tolist())),
        "confusion_matrix": metrics["confusion_matrix"],
        "auc_one_against_rest": {classes[k]: float(roc_auc_score(labels == k, probs[:, k])) for k in counted},
        "ceiling_fitted_on_these_photos": {
            "macro_recall": recall_ceiling,
            "its_accuracy": float(np.mean(at_recall_ceiling == labels)),
            "its_recall": dict(zip(metrics["macro_classes"], recalls(at_recall_ceiling, labels, counted))),
            "offsets_for_macro_recall": dict(zip(classes, recall_offsets.round(2).tolist())),
            "accuracy": accuracy_ceiling,
            "offsets_for_accuracy": dict(zip(classes, accuracy_offsets.round(2).tolist())),
        },
    }
    if args.sheets:
        result["sheets"] = draw_sheets(samples, probs, labels, classes, loaded.config.image_size, args.sheets)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path = write_result(f"real_photo_errors_{args.name}", result)

    print(f"{args.name} on {args.data} ({len(labels)} photos, whole), {machine_description()}")
    print(f"accuracy {metrics['accuracy']:.4f}  macro recall {metrics['macro_recall']:.4f} over {len(counted)} classes")
    print(f"{'class':<10}{'labelled':>9}{'predicted':>10}{'recall':>8}{'AUC':>7}")
    for k in counted:
        c = classes[k]
        print(
            f"{c:<10}{result['labelled'][c]:>9}{result['predicted'][c]:>10}{result['recall'][c]:>8.3f}"
            f"{result['auc_one_against_rest'][c]:>7.3f}"
        )
    others = [c for c in classes if classes.index(c) not in counted]
    print("other classes predicted: " + ", ".join(f"{c} {result['predicted'][c]}" for c in others))
    ceiling = result["ceiling_fitted_on_these_photos"]
    print(
        "ceiling of a decision rule fitted on these photos (not shippable): "
        f"macro recall {ceiling['macro_recall']:.4f} "
        f"(accuracy {ceiling['its_accuracy']:.4f}) with offsets {ceiling['offsets_for_macro_recall']}; "
        f"accuracy alone {ceiling['accuracy']:.4f}"
    )
    for sheet in result.get("sheets", []):
        print(f"sheet: {sheet}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Does a model read the same photos alike however tightly they are framed? webfaces-dev at 85%, 100% and 115%.

    python benchmarks/framing_robustness.py                                   # the bundled model
    python benchmarks/framing_robustness.py --checkpoint runs/x/best.pth --name x
    python benchmarks/framing_robustness.py --faces detected --name bundled_detected   # as `ferkit predict` reads
    python benchmarks/framing_robustness.py --tta flip --name bundled_flip             # each photo and its mirror
    python benchmarks/framing_robustness.py --prior photos --name bundled_photos        # read for everyday photos
    python benchmarks/framing_robustness.py --checkpoint x.pth --name x --prior photos --paired-with bundled_photos

Each photo is taken whole as the face (as ``ferkit evaluate --data webfaces-dev`` does) after reframing it about
its centre: a box of F times the photo's sides, cut out at F < 1 (a tighter face) and padded with the edge
pixels at F > 1 (a looser one: the surroundings continue, as they do around a detector's box). The figures are
accuracy, macro recall and per-class recall over the classes with at least 50 photos (Angry, Happy, Neutral, Sad,
Surprise), per framing, and the largest change of a class's recall between framings: issue 20 asks for at most
0.05. Each change comes with a 95% bootstrap interval over the photos (Sad has 60: one photo is 0.017 of
recall). With ``--faces detected`` each reframed photo is read as ``ferkit predict`` reads a photo (its largest face
found, turned upright and cut out at FER2013's framing; read whole where none is found), which shows how much of
the swing the product's own path takes out. With ``--paired-with`` the mean swing, and each framing's accuracy and
macro recall, are also set against another model's (or reading's: ``--tta``, ``--prior``) measured on the same
photos, through the same bootstrap draws: two models' separate intervals overlap far more than their difference
varies. Writes ``benchmarks/results/framing_robustness_NAME.json``, each photo's reading
at each framing included.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_DATA, RESULTS, write_result  # benchmarks/common.py, on sys.path as scripts run

from ferkit.config import FACES, PREDICT_TTA_MODES
from ferkit.data.datasets import Sample, load_image, read_whole_folder
from ferkit.evaluation.metrics import compute_metrics
from ferkit.evaluation.prior import DEFAULT_PRIOR
from ferkit.inference import Predictor
from ferkit.inference.evaluate import detected_faces
from ferkit.inference.faces import Detector, build_detector
from ferkit.runtime import machine_description

FRAMINGS = (0.85, 1.0, 1.15)
MIN_SUPPORT = 50
BOOTSTRAP = 1000


def reframe(rgb: np.ndarray, framing: float) -> np.ndarray:
    """A box of ``framing`` times the image's sides about its centre (1.0: the image as it is); edge pixels fill
    beyond the image."""
    height, width = rgb.shape[:2]
    box_h, box_w = round(height * framing), round(width * framing)
    top, left = (height - box_h) // 2, (width - box_w) // 2
    pad = max(0, -top, -left)
    if pad:
        rgb = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    return np.ascontiguousarray(rgb[top + pad : top + pad + box_h, left + pad : left + pad + box_w])


def faces_of(photos: list[np.ndarray], detector: Detector | None) -> tuple[list[np.ndarray], int]:
    """What the classifier is given for each photo, and how many photos had a face found."""
    if detector is None:
        return photos, len(photos)
    faces, found = detected_faces([Sample(p, 0, "") for p in photos], detector)
    return [s.source for s in faces], found


def photo_names(samples: list[Sample]) -> list[str]:
    """``class/file`` of each photo, in order: the same photos read from another path compare alike."""
    return [f"{Path(s.source).parent.name}/{Path(s.source).name}" for s in samples]


def measure(
    checkpoint: str | None,
    data: Path,
    detector: Detector | None = None,
    tta: str = "none",
    prior: str = DEFAULT_PRIOR,
    batch: int = 256,
) -> dict:
    predictor = Predictor.from_checkpoint(checkpoint, tta=tta, prior=prior)
    samples, _ = read_whole_folder(data, tuple(predictor.classes))
    labels = np.array([s.label for s in samples])
    probs = {f: [] for f in FRAMINGS}
    found = dict.fromkeys(FRAMINGS, 0)
    for start in range(0, len(samples), batch):
        photos = [np.asarray(load_image(s).convert("RGB")) for s in samples[start : start + batch]]
        for f in FRAMINGS:
            faces, n = faces_of([reframe(p, f) for p in photos], detector)
            probs[f].append(predictor.classify(faces))
            found[f] += n
    figures = {}
    for f in FRAMINGS:
        m = compute_metrics(labels, np.concatenate(probs[f]), predictor.classes, MIN_SUPPORT)
        figures[f"{f:.2f}"] = {
            "faces_found": found[f],
            "accuracy": m["accuracy"],
            "macro_recall": m["macro_recall"],
            "recall": {c: m["per_class"][c]["recall"] for c in m["macro_classes"]},
        }
    classes = list(figures["1.00"]["recall"])
    spread = {
        c: max(v["recall"][c] for v in figures.values()) - min(v["recall"][c] for v in figures.values())
        for c in classes
    }
    predicted = np.stack([np.concatenate(probs[f]).argmax(axis=1) for f in FRAMINGS])
    intervals = bootstrap_changes(labels, predicted, [predictor.classes.index(c) for c in classes])
    return {
        "images": len(samples),
        "classes": list(predictor.classes),
        "photo_set": hashlib.sha256("\n".join(photo_names(samples)).encode()).hexdigest(),
        "framings": figures,
        "largest_recall_change": spread,
        "largest_recall_change_95": dict(zip(classes, intervals["classes"])),
        "mean_largest_change_95": intervals["mean"],
        # Kept so that another model can be compared with this one on the same photos (--paired-with), a digit a
        # photo: a list of numbers would make the file thirty times larger.
        "labels": digits(labels),
        "predicted": {f"{f:.2f}": digits(row) for f, row in zip(FRAMINGS, predicted)},
    }


def digits(classes: np.ndarray) -> str:
    assert classes.max() < 10, "one digit a photo holds at most 10 classes"
    return "".join(map(str, classes))


def from_digits(text: str) -> np.ndarray:
    return np.frombuffer(text.encode(), dtype=np.uint8) - ord("0")


def draws(photos: int, resamples: int = BOOTSTRAP) -> np.ndarray:
    """The bootstrap's photo indices, one row a draw: the same draw for every framing and every model compared."""
    return np.random.default_rng(0).integers(0, photos, (resamples, photos))


def drawn_changes(labels: np.ndarray, predicted: np.ndarray, classes: list[int], picks: np.ndarray) -> np.ndarray:
    """Each class's largest recall change between framings (``predicted``: framings x photos), one row a draw."""
    changes = np.empty((len(picks), len(classes)))
    for r, pick in enumerate(picks):
        truth, said = labels[pick], predicted[:, pick]
        for j, c in enumerate(classes):
            recall = (said[:, truth == c] == c).mean(axis=1)
            changes[r, j] = recall.max() - recall.min()
    return changes


def bootstrap_changes(labels: np.ndarray, predicted: np.ndarray, classes: list[int]) -> dict:
    """95% intervals of each class's largest recall change between framings, and of their mean, over photos drawn
    with replacement. A class of 60 photos moves 0.017 a photo, so a change of 0.05 is three photos: the interval
    says which differences between models the photos can tell apart."""
    changes = drawn_changes(labels, predicted, classes, draws(len(labels)))
    low, high = np.percentile(changes, [2.5, 97.5], axis=0)
    mean_low, mean_high = np.percentile(changes.mean(axis=1), [2.5, 97.5])
    return {"classes": [[float(a), float(b)] for a, b in zip(low, high)], "mean": [float(mean_low), float(mean_high)]}


def paired_difference(result: dict, other: dict) -> dict:
    """This model's mean swing minus another's, read on the same photos, and its 95% interval over draws shared by
    both: unlike two separate intervals, the photos' own difficulty cancels, so a smaller gap shows."""
    if result["photo_set"] != other.get("photo_set") or "predicted" not in other:
        raise SystemExit(f"{other['name']} was not measured on these photos with its predictions kept: measure again")
    labels = from_digits(result["labels"])
    classes = [result["classes"].index(c) for c in result["largest_recall_change"]]
    picks = draws(len(labels))
    mine, theirs = (
        drawn_changes(labels, np.stack([from_digits(p) for p in r["predicted"].values()]), classes, picks).mean(1)
        for r in (result, other)
    )
    low, high = np.percentile(mine - theirs, [2.5, 97.5])
    swing = np.mean(list(result["largest_recall_change"].values()))
    other_swing = np.mean([other["largest_recall_change"][c] for c in result["largest_recall_change"]])
    readings = {
        framing: paired_reading(labels, from_digits(said), from_digits(other["predicted"][framing]), classes, picks)
        for framing, said in result["predicted"].items()
    }
    return {
        "name": other["name"],
        "difference": float(swing - other_swing),
        "difference_95": [float(low), float(high)],
        "readings": readings,
    }


def paired_reading(labels: np.ndarray, mine: np.ndarray, theirs: np.ndarray, classes: list[int], picks) -> dict:
    """Accuracy and macro recall (over ``classes``) of one framing's predictions minus another model's, each with a
    95% interval over the shared draws of photos: whether reading alike costs anything in reading right."""

    def figures(said: np.ndarray, pick: np.ndarray) -> tuple[float, float]:
        truth, said = labels[pick], said[pick]
        return (said == truth).mean(), np.mean([(said[truth == c] == c).mean() for c in classes])

    whole = np.arange(len(labels))
    gap = np.subtract(figures(mine, whole), figures(theirs, whole))
    drawn = np.array([np.subtract(figures(mine, pick), figures(theirs, pick)) for pick in picks])
    low, high = np.percentile(drawn, [2.5, 97.5], axis=0)
    return {
        name: {"difference": float(gap[i]), "difference_95": [float(low[i]), float(high[i])]}
        for i, name in enumerate(("accuracy", "macro_recall"))
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint", default=None, help="a .pth/.safetensors/.onnx file; the bundled model if omitted"
    )
    parser.add_argument(
        "--name", default="bundled", help="result name: benchmarks/results/framing_robustness_NAME.json"
    )
    parser.add_argument(
        "--data", type=Path, default=Path(DEFAULT_DATA).parent / "webfaces-dev", help="a folder of class folders"
    )
    parser.add_argument(
        "--faces",
        choices=FACES,
        default="given",
        help="given: each photo whole is the face; detected: its largest face, found and aligned by the default "
        "detector as `ferkit predict` does",
    )
    parser.add_argument(
        "--tta", choices=PREDICT_TTA_MODES, default="none", help="test-time augmentation, as `ferkit predict`'s"
    )
    parser.add_argument(
        "--prior",
        default=DEFAULT_PRIOR,
        help="the class mix the probabilities are read for, as `ferkit predict --prior` (default: the model's own)",
    )
    parser.add_argument(
        "--paired-with",
        metavar="NAME",
        default=None,
        help="also give this model's mean swing minus that of framing_robustness_NAME.json (measured on the same "
        "photos), with a 95%% interval over draws of photos shared by both",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    detector = build_detector() if args.faces == "detected" else None
    result = {
        "name": args.name,
        "checkpoint": args.checkpoint or "bundled",
        "data": str(args.data),
        "faces": args.faces,
        "tta": args.tta,
        "prior": args.prior,
        "machine": machine_description(),
        **measure(args.checkpoint, args.data, detector, args.tta, args.prior),
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"{args.name} on {result['images']} photos of {args.data.name} ({result['machine']}, {result['seconds']} s)")
    classes = list(result["largest_recall_change"])
    print(f"{'framing':<9}{'faces':>7}{'accuracy':>9}{'macro R':>9}" + "".join(f"{c:>10}" for c in classes))
    for f, v in result["framings"].items():
        print(
            f"{f:<9}{v['faces_found']:>7}{v['accuracy']:>9.3f}{v['macro_recall']:>9.3f}"
            + "".join(f"{v['recall'][c]:>10.3f}" for c in classes)
        )
    print(f"{'change':<34}" + "".join(f"{result['largest_recall_change'][c]:>10.3f}" for c in classes))
    low_high = [result["largest_recall_change_95"][c] for c in classes]
    print(f"{'95% interval':<34}" + "".join(f"{f'{lo:.2f}-{hi:.2f}':>10}" for lo, hi in low_high))
    swing = np.mean(list(result["largest_recall_change"].values()))
    lo, hi = result["mean_largest_change_95"]
    print(f"mean of the five changes {swing:.3f} (95% interval {lo:.3f}-{hi:.3f})")
    if args.paired_with:
        other = json.loads((RESULTS / f"framing_robustness_{args.paired_with}.json").read_text())
        result["paired_with"] = paired_difference(result, other)
        gap, (lo, hi) = result["paired_with"]["difference"], result["paired_with"]["difference_95"]
        print(f"minus {args.paired_with}'s on the same photos: {gap:+.3f} (95% interval {lo:+.3f} to {hi:+.3f})")
        for framing, reading in result["paired_with"]["readings"].items():
            print(
                f"  at {framing}: "
                + ", ".join(
                    f"{name.replace('_', ' ')} {v['difference']:+.4f} ({v['difference_95'][0]:+.4f} to "
                    f"{v['difference_95'][1]:+.4f})"
                    for name, v in reading.items()
                )
            )
    path = write_result(f"framing_robustness_{args.name}", result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Face detection and alignment on real photos: what ferkit's detectors find, where, and how fast.

    python benchmarks/face_detection.py                        # every detector, every figure
    python benchmarks/face_detection.py --detectors retinaface --skip-framing

Per detector (``--detector`` names):
- faces-dev: annotated faces found (IoU >= 0.4, greedy by score), false detections, dogs.jpg, bald_guys.jpg;
  the eye-centre error of the landmarks against the 68-point annotation, over the eye distance;
- webfaces-dev: the share of photos with at least one face; FER2013 PublicTest enlarged to 192 px: the share
  of faces found;
- the median time to detect the faces of a 1-MP photo (a faces-dev photo resized to 1155x866).
And the framing check: the bundled model's PrivateTest accuracy on FER2013's own crops beside its accuracy
through detection + alignment of the same faces enlarged to 192 px (a miss counts as a wrong answer).
Prints the figures and writes benchmarks/results/face_detection.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image

from ferkit.data.datasets import load_splits
from ferkit.inference.align import face_crop
from ferkit.inference.faces import DETECTORS, build_detector
from ferkit.inference.predict import Predictor
from ferkit.runtime import machine_description

SHARED = Path(__file__).resolve().parents[2] / "shared/data"
FACES_DEV, WEBFACES, FER2013 = SHARED / "faces-dev", SHARED / "webfaces-dev", SHARED / "fer2013"
RESULTS = Path(__file__).resolve().parent / "results/face_detection.json"


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def fer192(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB").resize((192, 192), Image.BICUBIC))


def iou(a, b) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h + 1e-9)


def faces_dev_truth() -> dict[str, list[tuple[tuple, np.ndarray | None]]]:
    """{photo: [(box, eye centres sorted left to right, or None)]} from the boxes and 68-point files."""
    truth = {}
    for split in ("training", "testing"):
        eyes = {}
        for image in ET.parse(FACES_DEV / f"{split}_with_face_landmarks.xml").getroot().iter("image"):
            for b in image.iter("box"):
                key = (image.get("file"), *(int(b.get(k)) for k in ("left", "top", "width", "height")))
                parts = {int(p.get("name")): (float(p.get("x")), float(p.get("y"))) for p in b.iter("part")}
                if len(parts) == 68:
                    pair = np.array([np.mean([parts[i] for i in range(a, a + 6)], 0) for a in (36, 42)])
                    eyes[key] = pair[np.argsort(pair[:, 0])]
        for image in ET.parse(FACES_DEV / f"{split}.xml").getroot().iter("image"):
            for b in image.iter("box"):
                box = tuple(int(b.get(k)) for k in ("left", "top", "width", "height"))
                truth.setdefault(image.get("file"), []).append((box, eyes.get((image.get("file"), *box))))
    return truth


def faces_dev(detector) -> dict:
    found = false = 0
    errors = []
    for name, faces in faces_dev_truth().items():
        detections = sorted(detector.detect(rgb(FACES_DEV / name)), key=lambda d: -(d.score or 0))
        free = list(range(len(faces)))
        for d in detections:
            best = max(free, key=lambda j: iou(d.box, faces[j][0]), default=None)
            if best is None or iou(d.box, faces[best][0]) < 0.4:
                false += 1
                continue
            free.remove(best)
            found += 1
            truth_eyes = faces[best][1]
            if d.landmarks is not None and truth_eyes is not None:
                eyes = d.landmarks[:2][np.argsort(d.landmarks[:2, 0])]
                distance = np.linalg.norm(truth_eyes[1] - truth_eyes[0])
                errors.append(float(np.linalg.norm(eyes - truth_eyes, axis=1).mean() / distance))
    return {
        "found": found,
        "annotated": 43,
        "false": false,
        "dogs_false": len(detector.detect(rgb(FACES_DEV / "dogs.jpg"))),
        "bald_guys_faces": len(detector.detect(rgb(FACES_DEV / "bald_guys.jpg"))),
        "eye_error_over_eye_distance_median": float(np.median(errors)) if errors else None,
        "eye_error_n": len(errors),
    }


def share_found(detector, images) -> dict:
    images = list(images)
    hits = sum(bool(detector.detect(image)) for image in images)
    return {"images": len(images), "with_face": hits, "share": hits / len(images)}


def photo_ms(detector, repeats: int) -> float:
    photo = np.asarray(Image.open(FACES_DEV / "2007_007763.jpg").convert("RGB").resize((1155, 866), Image.BICUBIC))
    for _ in range(3):
        detector.detect(photo)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        detector.detect(photo)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def framing(limit: int) -> dict:
    """The bundled model on PrivateTest: FER2013's own crops beside detection + alignment of them at 192 px."""
    splits = load_splits(str(FER2013), "clean")
    samples = splits.report[:limit] if limit else splits.report
    predictor = Predictor.default(prior="model")  # FER2013's own test images: its own class mix
    detector = build_detector()
    labels = np.array([s.label for s in samples])
    crops_probs = predictor.classify([rgb(s.source) for s in samples])
    aligned, found = [], []
    for s in samples:
        image = fer192(s.source)
        faces = detector.detect(image)
        found.append(bool(faces))
        aligned.append(face_crop(image, faces[0], 0.1) if faces else image)
    aligned_probs = predictor.classify(aligned)
    hit = np.array(found)
    right = aligned_probs.argmax(1) == labels
    return {
        "images": len(samples),
        "accuracy_on_crops": float((crops_probs.argmax(1) == labels).mean()),
        "accuracy_detected_aligned_miss_is_wrong": float((right & hit).mean()),
        "accuracy_detected_aligned_on_found": float(right[hit].mean()),
        "found_share": float(hit.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--detectors", nargs="+", choices=DETECTORS, default=list(DETECTORS))
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the 1-MP photo")
    parser.add_argument("--skip-framing", action="store_true")
    parser.add_argument("--limit", type=int, default=0, help="at most N images of each dataset (0: all)")
    args = parser.parse_args()
    web = sorted(WEBFACES.glob("*/*"))[: args.limit or None]
    public = [s.source for s in load_splits(str(FER2013), "clean").select][: args.limit or None]
    out = {"machine": machine_description(), "detectors": {}}
    for name in args.detectors:
        detector = build_detector(name)
        row = {"faces_dev": faces_dev(detector)}
        row["webfaces_dev"] = share_found(detector, (rgb(p) for p in web))
        row["fer2013_publictest_192"] = share_found(detector, (fer192(p) for p in public))
        row["photo_1mp_ms"] = photo_ms(detector, args.repeats)
        out["detectors"][name] = row
        print(name, json.dumps(row), flush=True)
    if not args.skip_framing:
        out["framing"] = framing(args.limit)
        print("framing", json.dumps(out["framing"]), flush=True)
    out["load_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {RESULTS}; {out['load_after']}")


if __name__ == "__main__":
    main()

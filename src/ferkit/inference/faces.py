"""Faces found in an image: what every detector returns, the detectors ferkit has, and choosing one by name.

Nothing is downloaded: RetinaFace's weights ship inside ferkit (``weights/NOTICE.md``), the Haar
cascade inside OpenCV 4.x. BENCHMARKS.md compares the candidates on faces-dev, webfaces-dev and
FER2013; RetinaFace found every annotated face of faces-dev where the cascade found 19 of 43.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..errors import FerkitError

DETECTORS = ("retinaface", "haar")
DETECTOR = "retinaface"
# Faces below 24 px hold too little for an expression; the detector still upsamples a photo so that
# faces of this size reach its smallest anchor.
MIN_FACE = 24.0
# On faces-dev 0.6 keeps every annotated face (turned and 35-px ones included) and no false one;
# 0.5 adds a dog (BENCHMARKS.md, the threshold sweep).
SCORE_THRESHOLD = 0.6


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x, y, width, height in the image's pixels
    # (5, 2): the eye on the image's left, the other eye, nose tip, left and right mouth corners; None from Haar
    landmarks: np.ndarray | None = None
    score: float | None = None  # the detector's face probability; None from Haar, which has none

    def crop_box(self, margin: float, width: int, height: int) -> tuple[int, int, int, int]:
        """The box grown by ``margin`` of its size on every side, in whole pixels clipped to the image."""
        x, y, w, h = self.box
        x0, y0 = max(round(x - w * margin), 0), max(round(y - h * margin), 0)
        x1, y1 = min(round(x + w * (1 + margin)), width), min(round(y + h * (1 + margin)), height)
        return x0, y0, x1 - x0, y1 - y0


class Detector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Detection]:
        """Faces in an RGB uint8 image, largest first."""

    @property
    def settings(self) -> dict[str, object]:
        """The detector's name and every option that changes which faces it finds, recorded beside what it found."""


def build_detector(
    name: str = DETECTOR,
    min_face: float = MIN_FACE,
    score_threshold: float = SCORE_THRESHOLD,
    max_faces: int | None = None,
) -> Detector:
    """A detector by its ``--detector`` name; with ``max_faces``, one that keeps only that many of the largest."""
    if min_face <= 0:
        raise FerkitError(f"--min-face must be > 0 pixels (got {min_face})")
    if not 0 <= score_threshold <= 1:
        raise FerkitError(f"--face-threshold must be in [0, 1] (got {score_threshold})")
    if max_faces is not None and max_faces < 1:
        raise FerkitError(f"--max-faces must be 1 or more (got {max_faces}); leave it out for every face")
    if name == "retinaface":
        from .retinaface import RetinaFace

        detector: Detector = RetinaFace(score_threshold=score_threshold, min_face=min_face)
    elif name == "haar":
        from .haar import HaarCascade

        detector = HaarCascade(min_face_px=min_face)
    else:
        raise FerkitError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}")
    return detector if max_faces is None else Largest(detector, max_faces)


class Largest:
    """A detector's ``count`` largest faces: a portrait's subject without the people behind, one row a photo."""

    def __init__(self, detector: Detector, count: int) -> None:
        self.detector, self.count = detector, count

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.detector.detect(rgb)[: self.count]

    @property
    def settings(self) -> dict[str, object]:
        return {**self.detector.settings, "max_faces": self.count}


def check_margin(margin: float) -> None:
    if not margin >= 0:  # NaN too
        raise FerkitError(f"--margin {margin:g}: a fraction of the face box added on every side, 0 or more")


def largest_first(detections: list[Detection]) -> list[Detection]:
    return sorted(detections, key=lambda d: d.box[2] * d.box[3], reverse=True)

"""Each detected face turned upright by its eyes and cut out with the framing FER2013's faces have.

A model trained on FER2013 saw faces framed one way: FER2013's crops were registered so that faces sit
about centred and fill about the same share of the frame. ``FER2013`` is that framing, measured by
running the RetinaFace detector on 3,000 FER2013 training faces enlarged to 192 px (where the crop is the
whole frame) and taking the median of where the frame lies relative to the five landmarks; the side
was then narrowed to 0.9 of that median on PublicTest, where the bundled model read the aligned faces
best (BENCHMARKS.md, "Face detection and alignment"). With u = (eye distance + eye-to-mouth distance) / 2:

    centre = eye midpoint + R(roll) (dx, dy) u        side = s u

Faces without landmarks (the Haar detector) are cut as their box grown by a margin instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .faces import Detection
from .opencv import require_cv2


@dataclass(frozen=True)
class Framing:
    dx: float  # the crop's centre from the eye midpoint along the eye line, in units
    dy: float  # ... and across it, towards the mouth
    side: float  # the crop's side, in units


# The median fit; PublicTest accuracy through detection and alignment with the side at 0.8 / 0.85 / 0.9 / 0.95 / 1.0 /
# 1.05 of it: 65.1 / 66.2 / 67.1 / 66.6 / 65.7 / 64.4% (on the crops: 68.7%).
FER2013_MEDIAN = Framing(dx=-0.003, dy=0.313, side=2.663)
FER2013 = replace(FER2013_MEDIAN, side=2.397)
# The crop is cut at about the face's own resolution and bounded: the classifier's transform then
# resizes it with antialiasing, which a direct warp to 48 px would lack.
SMALLEST_CROP, LARGEST_CROP = 32, 256


def roll_degrees(landmarks: np.ndarray) -> float:
    """The eye line's angle to the horizontal (image y points down)."""
    dx, dy = landmarks[1] - landmarks[0]
    return math.degrees(math.atan2(dy, dx))


def framed_square(landmarks: np.ndarray, framing: Framing = FER2013) -> tuple[np.ndarray, float, float]:
    """The framed square in image coordinates: its centre (x, y), side and roll (radians)."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    eyes = (points[0] + points[1]) / 2
    roll = math.radians(roll_degrees(points))
    across = np.array([math.cos(roll), math.sin(roll)])
    down = np.array([-math.sin(roll), math.cos(roll)])
    # Measured across the eye line, so the eye-to-mouth distance does not depend on the roll.
    eye_mouth = float(((points[3] + points[4]) / 2 - eyes) @ down)
    unit = (float(np.hypot(*(points[1] - points[0]))) + eye_mouth) / 2
    centre = eyes + unit * (framing.dx * across + framing.dy * down)
    return centre, framing.side * unit, roll


def aligned_crop(
    rgb: np.ndarray, landmarks: np.ndarray, framing: Framing = FER2013, size: int | None = None
) -> np.ndarray:
    """The upright, framed face as a square image (``size`` px a side; by default about the face's own).

    Outside the image the border pixels are repeated: a black band would be an edge the classifier never saw.
    """
    cv2 = require_cv2()
    centre, side, roll = framed_square(landmarks, framing)
    size = size or int(np.clip(round(side), SMALLEST_CROP, LARGEST_CROP))
    k, c, s = side / size, math.cos(roll), math.sin(roll)
    # Output pixel (u, v) samples the image at centre + k R(roll) (u + 0.5 - size/2, v + 0.5 - size/2) - 0.5,
    # in OpenCV's pixel-centre convention.
    to_image = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0]])
    to_image[:, 2] = centre + (0.5 - size / 2) * np.array([k * c - k * s, k * s + k * c]) - 0.5
    return cv2.warpAffine(
        rgb, to_image, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def face_crop(rgb: np.ndarray, face: Detection, margin: float, framing: Framing = FER2013) -> np.ndarray:
    """What the classifier sees of a detected face: aligned and framed when it has landmarks, else its box
    grown by ``margin`` of its size per side."""
    if face.landmarks is not None:
        return aligned_crop(rgb, face.landmarks, framing)
    x, y, w, h = face.crop_box(margin, rgb.shape[1], rgb.shape[0])
    return rgb[y : y + h, x : x + w]

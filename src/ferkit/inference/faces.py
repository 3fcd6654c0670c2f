"""Face detection for photos and video frames, with weights that ship inside a registry package.

OpenCV's Haar cascades come inside ``opencv-python-headless`` (4.x), so nothing is downloaded at
run time. Detection runs on a downscaled grey copy (the cascade's cost grows with the pixel count,
and FER models see faces at 48-96 pixels anyway); boxes are mapped back to the full image.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from .opencv import require_cv2

# alt2 finds the astronaut's face without the false "face" on her helmet that the default cascade
# reports at higher resolutions, at a similar cost.
DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


@dataclass(frozen=True)
class Box:
    x: int
    y: int
    w: int
    h: int

    def expanded(self, margin: float, width: int, height: int) -> Box:
        """The box grown by ``margin`` of its size on every side, clipped to the image."""
        dx, dy = round(self.w * margin), round(self.h * margin)
        x0, y0 = max(self.x - dx, 0), max(self.y - dy, 0)
        x1, y1 = min(self.x + self.w + dx, width), min(self.y + self.h + dy, height)
        return Box(x0, y0, x1 - x0, y1 - y0)

    def as_list(self) -> list[int]:
        return [self.x, self.y, self.w, self.h]


def require_cascades():
    cv2 = require_cv2()
    if not hasattr(cv2, "CascadeClassifier"):
        raise FerkitError(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.x); pip install 'opencv-python-headless<5'"
        )
    return cv2


class FaceDetector:
    """Frontal faces in an RGB image, largest first.

    ``max_side``: the longer side of the copy the cascade scans; ``min_face``: the smallest face
    reported, as a fraction of the image's shorter side (smaller faces hold too few pixels for FER).
    The defaults go together: 6% of 320 px is about the cascade's 20 px window, so a larger copy
    would cost more (384 px: +25% time) without finding smaller faces.
    """

    def __init__(
        self,
        max_side: int = 320,
        min_face: float = 0.06,
        scale_factor: float = 1.2,
        min_neighbors: int = 5,
        cascade: str = DEFAULT_CASCADE,
    ) -> None:
        cv2 = require_cascades()
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FerkitError(f"cannot load the face cascade {path}; reinstall opencv-python-headless")
        self.max_side, self.min_face = max_side, min_face
        self.scale_factor, self.min_neighbors = scale_factor, min_neighbors

    def detect(self, rgb: np.ndarray) -> list[Box]:
        cv2 = require_cv2()
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        if scale < 1.0:
            grey = cv2.resize(grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        smallest = max(round(min(grey.shape) * self.min_face), 20)
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(smallest, smallest)
        )
        boxes = [Box(round(x / scale), round(y / scale), round(w / scale), round(h / scale)) for x, y, w, h in found]
        return sorted(boxes, key=lambda b: b.w * b.h, reverse=True)

"""OpenCV's frontal-face Haar cascade (``--detector haar``): boxes only, no landmarks or score.

The cascades come inside ``opencv-python-headless`` (4.x), so nothing is downloaded at
run time. Detection runs on a downscaled grey copy (the cascade's cost grows with the pixel count,
and FER models see faces at 48-96 pixels anyway); boxes are mapped back to the full image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FerkitError
from .faces import Detection, largest_first
from .opencv import require_cv2

# alt2 finds the astronaut's face without the false "face" on her helmet that the default cascade
# reports at higher resolutions, at a similar cost.
DEFAULT_CASCADE = "haarcascade_frontalface_alt2.xml"


def require_cascades():
    cv2 = require_cv2()
    if not hasattr(cv2, "CascadeClassifier"):
        raise FerkitError(
            f"OpenCV {cv2.__version__} has no Haar cascades (removed in 5.x); "
            "pip install 'opencv-python-headless<5' or use --detector retinaface"
        )
    return cv2


class HaarCascade:
    """Frontal faces in an RGB image, largest first.

    ``max_side``: the longer side of the copy the cascade scans; ``min_face``: the smallest face
    reported, as a fraction of the image's shorter side (smaller faces hold too few pixels for FER),
    and ``min_face_px`` in the image's pixels. The defaults go together: 6% of 320 px is about the
    cascade's 20 px window, so a larger copy would cost more (384 px: +25% time) without finding
    smaller faces.
    """

    def __init__(
        self,
        max_side: int = 320,
        min_face: float = 0.06,
        min_face_px: float = 0.0,
        scale_factor: float = 1.2,
        min_neighbors: int = 5,
        cascade: str = DEFAULT_CASCADE,
    ) -> None:
        cv2 = require_cascades()
        path = Path(cascade) if Path(cascade).is_file() else Path(cv2.data.haarcascades) / cascade
        self._cascade = cv2.CascadeClassifier(str(path))
        if self._cascade.empty():
            raise FerkitError(f"cannot load the face cascade {path}; reinstall opencv-python-headless")
        self.max_side, self.min_face, self.min_face_px = max_side, min_face, min_face_px
        self.scale_factor, self.min_neighbors, self.cascade = scale_factor, min_neighbors, cascade

    @property
    def settings(self) -> dict[str, object]:
        return {
            "detector": "haar",
            "max_side": self.max_side,
            "min_face": self.min_face,
            "min_face_px": self.min_face_px,
            "scale_factor": self.scale_factor,
            "min_neighbors": self.min_neighbors,
            "cascade": self.cascade,
        }

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        cv2 = require_cv2()
        height, width = rgb.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if rgb.ndim == 3 else rgb
        if scale < 1.0:
            grey = cv2.resize(grey, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        smallest = max(round(min(grey.shape) * self.min_face), round(self.min_face_px * scale), 20)
        found = self._cascade.detectMultiScale(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(smallest, smallest)
        )
        return largest_first([Detection((x / scale, y / scale, w / scale, h / scale)) for x, y, w, h in found])

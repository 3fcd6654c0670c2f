"""OpenCV, imported where it is needed: face detection, drawing and video."""

from __future__ import annotations

from ..errors import FerkitError


def require_cv2():
    try:
        import cv2
    except ImportError:
        raise FerkitError("this needs OpenCV: pip install opencv-python-headless") from None
    return cv2

"""OpenCV, imported where it is needed: face detection, drawing and video."""

from __future__ import annotations

import os

from ..errors import FerkitError


def require_cv2():
    # FFmpeg's own lines ("moov atom not found", a stream's decoding hiccups) would stand beside ferkit's one-line
    # errors, which say the same with the fix; set OPENCV_FFMPEG_LOGLEVEL to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise FerkitError("this needs OpenCV: pip install opencv-python-headless") from None
    return cv2

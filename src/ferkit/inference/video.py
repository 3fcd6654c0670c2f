"""Video files and cameras: which files are videos, their frames as RGB, and annotated frames back to a file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import FerkitError
from .opencv import require_cv2

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def read_video(source: str | int, every: int = 1) -> Iterator[tuple[int, float, np.ndarray]]:
    """(frame index, seconds, RGB frame) for every ``every``-th frame of a file or camera."""
    cv2 = require_cv2()
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        what = f"camera {source}" if isinstance(source, int) else f"video {source}"
        raise FerkitError(f"cannot open {what}; check that it exists and that OpenCV can decode it")
    fps = capture.get(cv2.CAP_PROP_FPS) or 0.0
    index = 0
    try:
        while True:
            if index % every:
                # Skipped frames are only grabbed: no conversion to an image, and nothing for the tracker.
                if not capture.grab():
                    break
                index += 1
                continue
            ok, bgr = capture.read()
            if not ok:
                break
            time_s = index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
            yield index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def list_videos(folder: Path) -> list[Path]:
    """The video files in a folder (any depth), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_video(p))


def _property(path: str, which: str) -> float:
    cv2 = require_cv2()
    capture = cv2.VideoCapture(path)
    value = capture.get(getattr(cv2, which))
    capture.release()
    return value


def video_fps(path: str) -> float:
    fps = _property(path, "CAP_PROP_FPS")
    return fps if fps and fps > 0 else 25.0


def frame_count(path: str) -> int:
    """The frame count the container states (0 when it does not), for a progress bar."""
    return max(int(_property(path, "CAP_PROP_FRAME_COUNT")), 0)


# What VideoWriter writes, the first the default: mp4v in MPEG-4 containers, MJPG in AVI.
WRITABLE_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".m4v")


class VideoWriter:
    """Annotated frames to a video file (mp4v for .mp4/.mov/.m4v, MJPG for .avi)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._writer = path, fps, None

    def write(self, rgb: np.ndarray) -> None:
        cv2 = require_cv2()
        if self._writer is None:
            codec = "mp4v" if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else "MJPG"
            self._writer = cv2.VideoWriter(
                str(self.path), cv2.VideoWriter_fourcc(*codec), self.fps, (rgb.shape[1], rgb.shape[0])
            )
            if not self._writer.isOpened():
                raise FerkitError(f"cannot write video {self.path}; use a .mp4 or .avi file name")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()

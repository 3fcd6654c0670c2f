"""Writing a drawn video: time a frame and bytes a second per codec that OpenCV's wheel can write, at 1280x720.

    python benchmarks/video_codecs.py [--frames 50] [--repeats 3] [--json out.json]

What ``--annotate`` may write (``ferkit.inference.video.VIDEO_CODECS``: mp4v in .mp4, Motion JPEG in .avi, VP8 in
.webm) beside VP9, which the wheel also writes and browsers also play. The frames are scikit-image's astronaut
at 1280x720, moved 8 pixels a frame, as ``VideoWriter`` gets them (its codec chosen by the file's suffix). Per
codec: the median over ``--repeats`` of the time a frame takes to write, the file's size per second of video at
25 fps, and whether OpenCV reads the frames back. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from common import write_report  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)
from skimage.data import astronaut

from ferkit.inference.video import VideoWriter

FPS = 25.0
# (name, suffix, fourcc); VP9 is written by OpenCV directly, ferkit's VideoWriter taking no suffix for it.
CODECS = [("mp4v", ".mp4", None), ("MJPG", ".avi", None), ("VP8", ".webm", None), ("VP9", ".webm", "VP90")]


def frames(count: int) -> list[np.ndarray]:
    picture = cv2.resize(astronaut(), (1280, 720))
    return [np.roll(picture, 8 * i, axis=1) for i in range(count)]


def write(path: Path, fourcc: str | None, rgb: list[np.ndarray]) -> float:
    """Seconds to write the frames (as ``--annotate`` does where ``fourcc`` is None)."""
    start = time.perf_counter()
    if fourcc is None:
        writer = VideoWriter(path, FPS)
        for i, frame in enumerate(rgb):
            writer.write(frame, at=i / FPS)
        writer.close()
    else:
        raw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), FPS, (1280, 720))
        for frame in rgb:
            raw.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        raw.release()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results/video_codecs.json"))
    args = parser.parse_args()
    rgb = frames(args.frames)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, suffix, fourcc in CODECS:
            path = Path(tmp) / f"{name}{suffix}"
            seconds = [write(path, fourcc, rgb) for _ in range(args.repeats)]
            capture, read = cv2.VideoCapture(str(path)), 0
            while capture.grab():
                read += 1
            capture.release()
            rows[name] = {
                "suffix": suffix,
                "ms_per_frame": round(1000 * statistics.median(seconds) / args.frames, 1),
                "kb_per_second": round(path.stat().st_size / 1024 / (args.frames / FPS)),
                "frames_read_back": read,
            }
            print(
                f"{name:<5} {suffix:<6} {rows[name]['ms_per_frame']:>7.1f} ms a frame "
                f"{rows[name]['kb_per_second']:>7} kB a second  {read}/{args.frames} frames read back"
            )
    write_report(
        args.json,
        opencv=cv2.__version__,
        size="1280x720",
        frames=args.frames,
        repeats=args.repeats,
        codecs=rows,
    )


if __name__ == "__main__":
    main()

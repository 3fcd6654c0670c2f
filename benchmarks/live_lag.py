"""How far behind a live camera the results fall: `ferkit predict rtsp://...` against a stream that does not wait.

    python benchmarks/live_lag.py [--src DIR ...] [--seconds 30] [--fps 25] [--people 1] [--json out.json]

A network camera sends its frames whether or not they are read: those not yet read wait in a buffer. Here
``cv2.VideoCapture`` is replaced, for an ``rtsp://`` address, by such a camera: frame k (``--people`` copies of
scikit-image's astronaut side by side in a 1280x720 frame) arrives ``k / fps`` seconds after the stream is opened,
and a read returns the oldest frame not yet read, at once if it has arrived, else when it does. The bundled model
reads it through ``stream_video`` (detection, classification, tracking), as ``ferkit predict rtsp://...`` does, for
``--seconds``. Each result's lag is the time from its frame's arrival to the result. Each ``--src`` (a ``src``
folder holding ``ferkit``; default this checkout's) is run in its own process, one after the other, so two commits
compare in one run (``git worktree add /tmp/old COMMIT``, then ``--src src /tmp/old/src``). Prints the figures and
writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import source_commit  # benchmarks/common.py (scripts run with benchmarks/ on sys.path)

ROOT = Path(__file__).resolve().parent.parent


class _Camera:
    """A live stream that sends ``fps`` frames a second from when it is opened, buffered until read."""

    fps, people = 25.0, 1
    arrived: dict[int, float] = {}

    def __init__(self, source, *args) -> None:
        import cv2
        import numpy as np
        from skimage.data import astronaut

        width = 1280 // self.people
        face = cv2.resize(astronaut()[:, :, ::-1], (width, width))[:720]
        self.frame = np.zeros((720, 1280, 3), np.uint8)
        for i in range(self.people):
            self.frame[: face.shape[0], i * width : (i + 1) * width] = face
        self.opened, self.index = time.monotonic(), 0

    def isOpened(self) -> bool:
        return True

    def get(self, prop) -> float:
        return 90000.0  # what some RTSP cameras report as their rate: their clock's

    def read(self):
        due = self.opened + self.index / self.fps
        time.sleep(max(0.0, due - time.monotonic()))
        self.arrived[self.index] = due
        self.index += 1
        return True, self.frame

    def grab(self) -> bool:
        return self.read()[0]

    def release(self) -> None:
        pass


def child(seconds: float, fps: float, people: int) -> dict:
    import cv2

    from ferkit.inference.predict import Predictor, stream_video

    _Camera.fps, _Camera.people = fps, people
    real = cv2.VideoCapture
    cv2.VideoCapture = lambda source, *a: _Camera(source) if str(source).startswith("rtsp://") else real(source, *a)
    predictor = Predictor.from_checkpoint(None)
    lags, last_frame, start = [], 0, time.monotonic()
    stream = stream_video(predictor, "rtsp://camera.local/live")
    for result in stream:
        lags.append(time.monotonic() - _Camera.arrived[result.frame])
        last_frame = result.frame
        if time.monotonic() - start >= seconds:
            break
    stream.close()
    tail = lags[-max(1, len(lags) // 10) :]
    return {
        "results": len(lags),
        "results_per_s": round(len(lags) / (time.monotonic() - start), 2),
        "frames_sent": last_frame + 1,
        "frames_dropped": last_frame + 1 - len(lags),
        "lag_median_s": round(statistics.median(lags), 3),
        "lag_last_tenth_median_s": round(statistics.median(tail), 3),
        "lag_max_s": round(max(lags), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, nargs="+", default=[ROOT / "src"])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--people", type=int, default=1, help="faces in each frame, side by side")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/live_lag.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.seconds, args.fps, args.people)))
        return
    from ferkit.runtime import machine_description

    runs = {}
    for src in args.src:
        argv = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--fps", str(args.fps)]
        argv += ["--people", str(args.people)]
        done = subprocess.run(
            argv, env={**os.environ, "PYTHONPATH": str(src)}, check=True, capture_output=True, text=True
        )
        runs[str(src)] = {"commit": source_commit(src), **json.loads(done.stdout.splitlines()[-1])}
    report = {
        "machine": machine_description(),
        "date": time.strftime("%Y-%m-%d"),
        "seconds": args.seconds,
        "fps": args.fps,
        "people": args.people,
        "runs": runs,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(report, indent=2))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Tracked video prediction on this machine: frames per second, and peak memory against the video's length.

    python benchmarks/video_fps.py [--checkpoint fer2013_resnet18.int8] [--seconds 10] [--json out.json]

- Frames per second end to end (decoding, detection, classification, tracking, smoothing) on a 640x480, 25 fps
  video of ``--seconds`` with 1 and with 3 people (scikit-image's astronaut, head and shoulders, walking to and
  fro), every frame used; how many faces a frame the detector found is reported beside.
- Peak resident memory (``resource.getrusage``) of ``ferkit predict`` writing CSV on a 1-minute and a 10-minute
  320x240, 10 fps video of one person, each in a fresh process: streaming means the two are about equal.
- With ``--server``: the same fps videos through ``ferkit serve``'s ``POST /video`` (the real server in a
  subprocess; upload, decoding and the batcher included), beside ``predict``'s figure measured in the same run.
Prints the figures and the load average (the machine is shared) and writes JSON.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from PIL import Image
from serve_load import free_port, start_server  # benchmarks/serve_load.py (scripts run with benchmarks/ on sys.path)
from skimage.data import astronaut

from ferkit.inference.predict import Predictor, predict_videos
from ferkit.runtime import machine_description


def write_people(path: Path, people: int, width: int, height: int, fps: float, seconds: float, scale: float) -> Path:
    """People walking to and fro along the bottom of a plain frame, each in their own lane and phase."""
    bust = astronaut()[0:260, 110:340]
    bust = np.asarray(Image.fromarray(bust).resize((round(230 * scale), round(260 * scale))))
    bh, bw = bust.shape[:2]
    lane = width // people
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for i in range(round(fps * seconds)):
        frame = np.full((height, width, 3), 128, np.uint8)
        for k in range(people):
            swing = max(lane - bw, 0)
            x = k * lane + round(swing * (0.5 + 0.5 * np.sin(i / fps + k)))
            frame[height - bh :, x : x + bw] = bust if k % 2 == 0 else bust[:, ::-1]
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def fps(predictor: Predictor, video: Path) -> dict:
    predict_videos(predictor, [str(video)])  # warm-up: first calls load the model and the cascade
    counter = itertools.count()
    start = time.perf_counter()
    summary, _ = predict_videos(predictor, [str(video)], on_frame=lambda _: next(counter))
    wall = time.perf_counter() - start
    frames, rows = next(counter), summary.rows()
    faces = sum(r["frames"] for r in rows) / frames
    return {"fps": round(frames / wall, 1), "frames": frames, "tracks": len(rows), "faces_per_frame": round(faces, 2)}


def server_fps(url: str, video: Path) -> dict:
    """Frames per second of one POST /video, upload to answer; a first, uncounted post warms the server up."""
    data = video.read_bytes()
    with httpx.Client(base_url=url, timeout=600) as http:
        http.post("/video", files={"file": (video.name, data)}).raise_for_status()
        start = time.perf_counter()
        answer = http.post("/video", files={"file": (video.name, data)}).raise_for_status().json()
    wall = time.perf_counter() - start
    frames = len(answer["results"])
    return {"fps": round(frames / wall, 1), "frames": frames, "every": answer["every"], "tracks": len(answer["tracks"])}


def peak_rss_mb(checkpoint: str, video: Path) -> float:
    """Peak RSS of ``ferkit predict VIDEO --csv`` in a fresh process, in MB."""
    child = (
        "import resource, sys; from ferkit.cli import main; main(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["predict", str(video), "--checkpoint", checkpoint, "--csv", f"{tmp}/frames.csv"]
        argv += ["--summary", f"{tmp}/summary.json"]
        out = subprocess.run([sys.executable, "-c", child, *argv], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="fer2013_resnet18.int8")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the fps videos")
    parser.add_argument("--json", default="benchmarks/results/video_fps.json")
    parser.add_argument("--server", action="store_true", help="also through ferkit serve's POST /video")
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.checkpoint)
    load_before = os.getloadavg()
    report = {"checkpoint": args.checkpoint, "machine": machine_description(), "fps_640x480": {}, "peak_rss_mb": {}}
    with tempfile.TemporaryDirectory() as tmp:
        server = None
        if args.server:
            port = free_port()
            server = start_server(args.checkpoint, port, 8, Path(tmp) / "serve.log")
            report["server_fps_640x480"] = {}
        # Three full-size busts do not fit side by side in 640 pixels.
        for people, scale in ((1, 1.0), (3, 0.8)):
            video = write_people(Path(tmp) / f"{people}.avi", people, 640, 480, 25.0, args.seconds, scale)
            what = f"{people} face{'s' * (people > 1)}"
            report["fps_640x480"][what] = fps(predictor, video)
            if server:
                report["server_fps_640x480"][what] = server_fps(f"http://127.0.0.1:{port}", video)
        if server:
            server.terminate()
            server.wait(timeout=60)
        for minutes in (1, 10):
            video = write_people(Path(tmp) / f"{minutes}min.avi", 1, 320, 240, 10.0, 60 * minutes, 0.5)
            report["peak_rss_mb"][f"{minutes} min 320x240 10 fps"] = peak_rss_mb(args.checkpoint, video)
    report["load_average_before_after"] = [round(x, 2) for x in (*load_before, *os.getloadavg())]
    print(json.dumps(report, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()

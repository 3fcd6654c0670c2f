"""Bounded load test of ``ferkit serve``: concurrent clients posting one photo for a fixed time.

    python benchmarks/serve_load.py [--checkpoint CKPT] [--clients 8] [--duration 30] [--image PHOTO]
                                    [--max-batch 8] [--json OUT]

Starts the real server (``python -m ferkit serve``) on a free loopback port, warms it up with one
request per client, then has every client post the image to /predict back to back until the
duration is over. Prints requests/s, p50/p95/p99 latency and the error count (non-200 answers and
failed connections; the script exits 1 when it is not 0), and writes them as JSON. Without
--checkpoint it serves an untrained spec model at 48x48 (the quick preset's input; inference
costs the same as a trained one) and says so.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def untrained_checkpoint(folder: Path, image_size: int = 48) -> Path:
    import torch

    from ferkit.checkpoint import atomic_save, make_checkpoint
    from ferkit.config import Config
    from ferkit.data.datasets import CLASSES
    from ferkit.model import build_model

    torch.manual_seed(0)
    cfg = Config().updated({"image_size": image_size})
    model = build_model(cfg, len(CLASSES)).eval()
    path = folder / f"untrained_{image_size}.pth"
    atomic_save(make_checkpoint(model, cfg, CLASSES), path)
    return path


def astronaut_png() -> bytes:
    from PIL import Image
    from skimage import data

    buffer = io.BytesIO()
    Image.fromarray(data.astronaut()).save(buffer, format="PNG")
    return buffer.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(checkpoint: str | Path, port: int, max_batch: int, log: Path) -> subprocess.Popen:
    command = [
        sys.executable,
        "-m",
        "ferkit",
        "serve",
        "--checkpoint",
        str(checkpoint),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
    ]
    process = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300  # importing torch alone takes tens of seconds on a loaded 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"ferkit serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    process.terminate()
    raise SystemExit(f"ferkit serve did not answer /health within 300 s:\n{log.read_text()}")


async def client(http: httpx.AsyncClient, image: bytes, name: str, until: float, latencies: list, errors: list):
    while time.perf_counter() < until:
        start = time.perf_counter()
        try:
            response = await http.post("/predict", files={"file": (name, image)})
            if response.status_code != 200:
                errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                continue
        except httpx.HTTPError as e:
            errors.append(f"{type(e).__name__}: {e}")
            continue
        latencies.append(time.perf_counter() - start)


async def load(url: str, image: bytes, name: str, clients: int, duration: float) -> dict:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        # One request per client first: opens the connections and the server's first batches, uncounted.
        warm_up = await asyncio.gather(*(http.post("/predict", files={"file": (name, image)}) for _ in range(clients)))
        latencies: list[float] = []
        errors = [f"warm-up HTTP {r.status_code}: {r.text[:200]}" for r in warm_up if r.status_code != 200]
        start = time.perf_counter()
        await asyncio.gather(*(client(http, image, name, start + duration, latencies, errors) for _ in range(clients)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    return {
        "requests": len(latencies),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:5],
        "seconds": round(elapsed, 2),
        "requests_per_s": round(len(latencies) / elapsed, 3),
        "latency_ms": {q: round(float(np.percentile(ms, int(q[1:]))), 1) for q in ("p50", "p95", "p99")}
        | {"mean": round(float(ms.mean()), 1), "max": round(float(ms.max()), 1)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="default: an untrained spec model at 48x48")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30, help="seconds of load after the warm-up")
    parser.add_argument("--image", type=Path, help="default: scikit-image's astronaut (512x512 PNG, one face)")
    parser.add_argument("--max-batch", type=int, default=8, help="the server's --max-batch (1: no micro-batching)")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint or untrained_checkpoint(Path(tmp))
        if args.checkpoint is None:
            print(
                f"no --checkpoint: serving an untrained spec model at 48x48 ({checkpoint.name}); "
                "latency and throughput are those of a trained one, the labels are not"
            )
        image = args.image.read_bytes() if args.image else astronaut_png()
        name = args.image.name if args.image else "astronaut.png"
        port = free_port()
        log = Path(tmp) / "server.log"
        load_before = os.getloadavg()
        process = start_server(checkpoint, port, args.max_batch, log)
        try:
            results = asyncio.run(load(f"http://127.0.0.1:{port}", image, name, args.clients, args.duration))
        finally:
            process.terminate()
            process.wait(timeout=60)
    report = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "checkpoint": str(args.checkpoint) if args.checkpoint else "untrained spec model, 48x48",
        "image": name,
        "image_bytes": len(image),
        "clients": args.clients,
        "duration_s": args.duration,
        "max_batch": args.max_batch,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()],
        },
        **results,
    }
    lat = results["latency_ms"]
    print(
        f"{args.clients} clients, {results['seconds']:.1f} s, --max-batch {args.max_batch}: "
        f"{results['requests']} requests, {results['requests_per_s']:.2f} requests/s; "
        f"latency p50 {lat['p50']:.0f} ms, "
        f"p95 {lat['p95']:.0f} ms, p99 {lat['p99']:.0f} ms (max {lat['max']:.0f}); errors {results['errors']}"
    )
    for example in results["error_examples"]:
        print(f"  error: {example}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    raise SystemExit(1 if results["errors"] else 0)


if __name__ == "__main__":
    main()

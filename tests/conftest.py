"""Shared fixtures and helpers: small synthetic datasets in both formats, the tiny training configuration, an
untrained checkpoint, and the real FER2013 when present (tests that read it are marked ``realdata``)."""

from __future__ import annotations

import functools
import os
import signal
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferkit.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from ferkit.config import Config, flag_of
from ferkit.data.datasets import CLASSES
from ferkit.model import build_model

# Keep the suite light on the 2-core CI machine and repeatable.
torch.set_num_threads(1)

# The smallest training run that still exercises everything: 16x16 images through a width-8 network (1/64 of the
# specification's convolution cost), 7 batches of 4 an epoch on the 28 images of make_image_folder.
TINY = dict(image_size=16, width=8, batch_size=4, epochs=3, workers=0, tensorboard=False, seed=3)

# Faces in scikit-image's 512x512 photos (x, y, w, h): the astronaut's checked by eye, the cameraman's as the
# detector boxes it.
ASTRONAUT_FACE = (175, 60, 100, 105)
CAMERAMAN_FACE = (195, 114, 61, 81)

REAL_DATA = Path(os.environ.get("FERKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared/data/fer2013"))


def _face(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    # Class-dependent brightness gives the tiny test runs something learnable.
    base = 30 + 30 * label
    return np.clip(rng.normal(base, 20, (size, size)), 0, 255).astype(np.uint8)


def make_image_folder(
    root: Path, per_class: int = 4, size: int = 20, folder_names=None, test_prefixes=("PublicTest_", "PrivateTest_")
) -> Path:
    rng = np.random.default_rng(0)
    names = folder_names or [c.lower() for c in CLASSES]
    for split in ("train", "test"):
        for label, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                prefix = "Training_" if split == "train" else test_prefixes[i % 2]
                Image.fromarray(_face(rng, label, size), mode="L").save(d / f"{prefix}{label}{i:03d}.png")
    return root


def make_photo_folder(root: Path, counts: dict[str, int], size: int = 40) -> Path:
    """A folder of class folders with no splits (as webfaces-dev, CK+48), ``counts`` images in each."""
    rng = np.random.default_rng(5)
    for label, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(_face(rng, label, size), mode="L").save(root / name / f"{i}.jpg")
    return root


def make_csv(path: Path, per_class: int = 3, size: int = 48) -> Path:
    rng = np.random.default_rng(1)
    rows = ["emotion,pixels,Usage"]
    for usage in ("Training", "PublicTest", "PrivateTest"):
        for label in range(len(CLASSES)):
            for _ in range(per_class):
                rows.append(f"{label},{' '.join(map(str, _face(rng, label, size).ravel()))},{usage}")
    path.write_text("\n".join(rows) + "\n")
    return path


def tiny(data, out, **kw) -> Config:
    """The TINY configuration training on ``data`` into ``out``, with ``kw`` changed."""
    return Config(**{"data": str(data), "out": str(out), **TINY, **kw})


def flags(values: dict) -> list[str]:
    """The command-line words that set these config values, as ``ferkit train`` takes them."""
    return [word for name, value in values.items() for word in flag_of(name, value).split()]


def weights(path: Path) -> dict:
    """The model weights of a checkpoint file, or of a run folder's last.pth."""
    path = Path(path)
    return read_checkpoint(path / "last.pth" if path.is_dir() else path)["model"]


def iou(a, b) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    w = max(0, min(ax1, bx1) - max(a[0], b[0]))
    h = max(0, min(ay1, by1) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def save_sideways(upright: np.ndarray, path: Path) -> Path:
    """``upright`` as a phone stores a portrait: a JPEG of the pixels turned a quarter, EXIF orientation 6 to turn
    them back."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(upright).copy()).save(path, exif=exif, quality=95)
    return path


def pytest_collection_modifyitems(config, items):
    """Every test that reads FER2013 says so, so that ``-m "not realdata"`` runs without it."""
    reads = [item for item in items if "real_data" in getattr(item, "fixturenames", ())]
    unmarked = [item.nodeid for item in reads if not item.get_closest_marker("realdata")]
    if unmarked:
        raise pytest.UsageError("tests reading FER2013 without @pytest.mark.realdata: " + ", ".join(unmarked))


@pytest.fixture(autouse=True)
def own_cache_folder(tmp_path_factory, monkeypatch) -> None:
    """Each test's cache folder its own (distillation keeps the teachers' labels there): nothing read from the user's
    cache, nor from another test's runs."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "fer")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "train").is_dir():
        pytest.skip(f"FER2013 not found at {REAL_DATA} (set FERKIT_TEST_DATA to its image-folder root)")
    return REAL_DATA


@pytest.fixture(scope="session")
def untrained_checkpoint(tmp_path_factory) -> Path:
    """An untrained spec model (width 8) at 32x32 with non-trivial BatchNorm statistics and a training record.

    Prediction, export and serving tests need a checkpoint, not a good one; training one takes minutes.
    """
    torch.manual_seed(0)
    cfg = Config().updated({"image_size": 32, "width": TINY["width"]})
    model = build_model(cfg, len(CLASSES))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 3, 32, 32) * 1.5 + 0.3)
    path = tmp_path_factory.mktemp("ckpt") / "best.pth"
    atomic_save(
        make_checkpoint(
            model.eval(), cfg, CLASSES, epoch=3, metrics={"accuracy": 0.5, "macro_f1": 0.25}, select_split="PublicTest"
        ),
        path,
    )
    return path


def sigint_after_optimizer_steps(monkeypatch, n: int):
    """Deliver SIGINT to this process right after the n-th AdamW step; returns the real step to restore."""
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def step_then_interrupt(self, *a, **k):
        result = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", step_then_interrupt)
    return real_step


FACES_DEV = REAL_DATA.parent / "faces-dev"


def portraits(size: int = 110) -> list[np.ndarray]:
    """Four real faces (RGB, ``size`` square, a little margin): the astronaut, her mirror image, and the two largest
    annotated faces of faces-dev (when absent, two more astronauts, darker, so the video is still four people)."""
    from skimage.data import astronaut

    x, y, w, h = ASTRONAUT_FACE
    face = astronaut()[y - 15 : y + h + 15, x - 15 : x + w + 15]
    faces = [face, face[:, ::-1]]
    boxes = []
    if (FACES_DEV / "training.xml").is_file():
        import xml.etree.ElementTree as ET

        for image in ET.parse(FACES_DEV / "training.xml").getroot().iter("image"):
            for b in image.iter("box"):
                bx, by, bw, bh = (int(b.get(k)) for k in ("left", "top", "width", "height"))
                boxes.append((bw * bh, image.get("file"), bx, by, bw, bh))
        for _, file, bx, by, bw, bh in sorted(boxes, reverse=True)[:2]:
            photo = np.asarray(Image.open(FACES_DEV / file).convert("RGB"))
            m = bw // 5
            faces.append(photo[max(by - m, 0) : by + bh + m, max(bx - m, 0) : bx + bw + m])
    else:
        faces += [(face * 0.7).astype(np.uint8), (face[:, ::-1] * 0.8).astype(np.uint8)]
    return [np.asarray(Image.fromarray(f).resize((size, size), Image.BICUBIC)) for f in faces]


@functools.cache  # drawing 80 noisy frames takes a second; the tests only read them
def people_video(frames: int = 80, width: int = 640, height: int = 480, size: int = 110):
    """Frames of four people on a plain background, and where each shows: (frames, truth), truth[i] a dict
    person -> visible [x, y, w, h] of frame i.

    0 and 1 walk the same row in opposite directions and cross (1 in front, hiding 0 for 0.6 s at 10 fps);
    2 stands at the bottom, then leaves downwards; 3 enters from the right half-way and walks in. A face more than
    half hidden (by another or the frame's edge) is not in the truth, as a detector would miss it. Each frame has
    its own sensor noise, as a camera's do, so a classifier's probabilities move from frame to frame.
    """
    rng = np.random.default_rng(0)
    faces = portraits(size)
    top, bottom = 60, height - size - 40
    out, truth = [], []
    for i in range(frames):
        t = i / (frames - 1)
        places = {
            0: (round(20 + t * (width - size - 40)), top),
            1: (round(width - size - 20 - t * (width - size - 40)), top),
            2: (80, round(bottom + max(0.0, i - 20) * 8)),
        }
        if i >= 40:
            places[3] = (round(width - 10 - (i - 40) * 6), bottom)
        frame = np.full((height, width, 3), 128, np.uint8)
        visible = {}
        for person in (0, 2, 3, 1):  # 1 last: in front of 0 where they cross
            if person not in places:
                continue
            x, y = places[person]
            x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + size, width), min(y + size, height)
            if x1 <= x0 or y1 <= y0:
                continue
            frame[y0:y1, x0:x1] = faces[person][y0 - y : y1 - y, x0 - x : x1 - x]
            if (x1 - x0) * (y1 - y0) >= size * size / 2:
                visible[person] = [x0, y0, x1 - x0, y1 - y0]
        if 1 in visible and 0 in visible and iou(visible[0], visible[1]) > 0.5:
            del visible[0]
        out.append(np.clip(frame + rng.normal(0, 6, frame.shape), 0, 255).astype(np.uint8))
        truth.append(visible)
    return tuple(out), tuple(truth)


def write_video(frames: list[np.ndarray], path: Path, fps: float = 10.0, fourcc: str = "MJPG") -> Path:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, frames[0].shape[1::-1])
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def write_animation(frames: list[np.ndarray], path: Path, delays: list[int]) -> Path:
    """An animated GIF, WebP or PNG (by the suffix) of RGB frames, each shown for its delay in milliseconds."""
    first, *rest = [Image.fromarray(frame) for frame in frames]
    first.save(path, save_all=True, append_images=rest, duration=delays, loop=0)
    return path


class LiveServer:
    """The app under uvicorn in a thread, on a socket bound here so no other process can take the port."""

    def __init__(self, app, **config) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        scheme = "https" if config.get("ssl_certfile") else "http"
        self.url = f"{scheme}://127.0.0.1:{self.socket.getsockname()[1]}"
        import uvicorn  # the serve extra; tests that start a server skip without it

        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()

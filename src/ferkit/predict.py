"""Which faces show which expression: photos, folders, video and camera frames.

Each image goes through face detection (or is taken as one face crop with ``detect=False``), each
face is cropped with a margin, preprocessed exactly as the checkpoint's test transform, and all
faces are classified in batches by a PyTorch or onnxruntime model.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import nn

from .config import Config
from .errors import FerkitError
from .evaluate import predict_probs
from .export import load_for_inference
from .faces import Box, FaceDetector, require_cv2
from .runtime import resolve_device
from .transforms import build_test_transform

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}


@dataclass
class Face:
    box: list[int]  # x, y, width, height in the input image's pixels
    label: str
    confidence: float
    probabilities: dict[str, float]


@dataclass
class Result:
    source: str
    width: int = 0
    height: int = 0
    faces: list[Face] = field(default_factory=list)
    error: str | None = None
    frame: int | None = None
    time_s: float | None = None

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None or k == "error"}


ImageInput = str | os.PathLike | Image.Image | np.ndarray


def upright_rgb(image: Image.Image) -> np.ndarray:
    """RGB pixels the way viewers show the file: phone photos store them sideways plus an EXIF
    rotation, and the detector finds upright faces (boxes then match what users see)."""
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def read_image(source: ImageInput) -> np.ndarray:
    """An RGB uint8 array from a path, a PIL image or an array (grey, RGB or RGBA)."""
    if isinstance(source, np.ndarray):
        array = source
    elif isinstance(source, Image.Image):
        array = np.asarray(source.convert("RGB"))
    else:
        path = Path(source)
        if not path.is_file():
            raise FerkitError(f"{path} does not exist or is not a file")
        try:
            with Image.open(path) as image:
                array = upright_rgb(image)
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
            reason = "not an image PIL can decode" if isinstance(e, UnidentifiedImageError) else str(e)
            raise FerkitError(f"cannot read {path}: {reason}; pass a JPEG, PNG, BMP, GIF, TIFF or WebP image") from None
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or array.size == 0:
        raise FerkitError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {array.shape}")
    return np.ascontiguousarray(array[..., :3].astype(np.uint8, copy=False))


class Predictor:
    """Per-face expression probabilities from a trained model.

    >>> predictor = Predictor.from_checkpoint("runs/quick/best.pth")
    >>> result = predictor.predict("photo.jpg")   # or a PIL image / numpy array
    >>> [(face.label, face.confidence) for face in result.faces]
    """

    def __init__(self, model: nn.Module, config: Config, classes: Sequence[str], device: str = "auto",
                 tta: str = "none", detector: FaceDetector | None = None, margin: float = 0.1,
                 batch_size: int = 64, precision: str = "fp32") -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config, self.classes = config, tuple(classes)
        self.transform = build_test_transform(config)
        # fp32 by default: bf16 rounding moves probabilities users read (``precision="bf16"`` to trade that).
        self.precision = precision
        self.tta, self.margin, self.batch_size = tta, margin, batch_size
        self._detector = detector

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike | None = None, backend: str = "auto", **kw) -> "Predictor":
        """A ``.pth`` from ``ferkit train``, ``.safetensors`` or ``.onnx`` from ``ferkit export``;
        ``None`` is the model bundled with ferkit.

        ``backend="onnxruntime"`` with PyTorch weights exports them in memory first.
        """
        model, config, classes, device = load_for_inference(path, backend, kw.pop("device", "auto"))
        return cls(model, config, classes, device=device, **kw)

    @classmethod
    def default(cls, **kw) -> "Predictor":
        """The FER2013 model that ships inside the package (MODEL_CARD.md); no download."""
        return cls.from_checkpoint(None, **kw)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector()
        return self._detector

    def classify(self, crops: Sequence[Image.Image | np.ndarray]) -> np.ndarray:
        """Probabilities (N x classes) for face crops, preprocessed as the checkpoint's test transform."""
        out = []
        for start in range(0, len(crops), self.batch_size):
            batch = torch.stack([self.transform(c) for c in crops[start:start + self.batch_size]])
            out.append(predict_probs(self.model, batch.to(self.device), self.precision, self.tta).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def _faces(self, rgb: np.ndarray, detect: bool) -> tuple[list[Box], list[np.ndarray]]:
        height, width = rgb.shape[:2]
        if not detect:
            return [Box(0, 0, width, height)], [rgb]
        boxes = self.detector.detect(rgb)
        crops = []
        for box in boxes:
            b = box.expanded(self.margin, width, height)
            crops.append(rgb[b.y:b.y + b.h, b.x:b.x + b.w])
        return boxes, crops

    def _to_faces(self, boxes: list[Box], probs: np.ndarray) -> list[Face]:
        return [Face(box.as_list(), self.classes[int(p.argmax())], float(p.max()),
                     {c: float(v) for c, v in zip(self.classes, p)}) for box, p in zip(boxes, probs)]

    def predict(self, image: ImageInput, detect: bool = True) -> Result:
        return self.predict_batch([image], detect)[0]

    def predict_batch(self, images: Sequence[ImageInput], detect: bool = True,
                      names: Sequence[str] | None = None) -> list[Result]:
        """One result per image; the faces of all images are classified together in batches.

        Images that cannot be read get ``error`` set instead of stopping the others.
        """
        results, boxes_of, crops = [], [], []
        for i, image in enumerate(images):
            name = names[i] if names else (str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}")
            try:
                rgb = read_image(image)
            except FerkitError as e:
                results.append(Result(name, error=str(e)))
                boxes_of.append([])
                continue
            boxes, face_crops = self._faces(rgb, detect)
            results.append(Result(name, width=rgb.shape[1], height=rgb.shape[0]))
            boxes_of.append(boxes)
            crops.extend(face_crops)
        probs = self.classify(crops)
        start = 0
        for result, boxes in zip(results, boxes_of):
            result.faces = self._to_faces(boxes, probs[start:start + len(boxes)])
            start += len(boxes)
        return results

    def predict_frames(self, frames: Iterable[tuple[int, float, np.ndarray]], detect: bool = True,
                       source: str = "") -> Iterator[tuple[Result, np.ndarray]]:
        """Results for (index, time, RGB frame) tuples, yielded with their frame for annotation."""
        for index, time_s, rgb in frames:
            boxes, crops = self._faces(rgb, detect)
            result = Result(source, rgb.shape[1], rgb.shape[0], self._to_faces(boxes, self.classify(crops)),
                            frame=index, time_s=round(time_s, 3))
            yield result, rgb


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


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
            ok, bgr = capture.read()
            if not ok:
                break
            if index % every == 0:
                time_s = index / fps if fps > 0 else capture.get(cv2.CAP_PROP_POS_MSEC) / 1000
                yield index, time_s, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            index += 1
    finally:
        capture.release()


def video_fps(path: str) -> float:
    cv2 = require_cv2()
    capture = cv2.VideoCapture(path)
    fps = capture.get(cv2.CAP_PROP_FPS)
    capture.release()
    return fps if fps and fps > 0 else 25.0


def annotate(rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of the image with each face's box and "label confidence" drawn on it."""
    cv2 = require_cv2()
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 400))
    for face in faces:
        x, y, w, h = face.box
        cv2.rectangle(out, (x, y), (x + w, y + h), (0, 220, 0), thickness)
        text = f"{face.label} {face.confidence:.0%}"
        scale = max(0.4, w / 200)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y - th - base - 4, 0)
        cv2.rectangle(out, (x, top), (x + tw + 4, top + th + base + 4), (0, 220, 0), -1)
        cv2.putText(out, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out


class VideoWriter:
    """Annotated frames to a video file (mp4v for .mp4/.mov, MJPG otherwise)."""

    def __init__(self, path: Path, fps: float) -> None:
        self.path, self.fps, self._writer = path, fps, None

    def write(self, rgb: np.ndarray) -> None:
        cv2 = require_cv2()
        if self._writer is None:
            codec = "mp4v" if self.path.suffix.lower() in (".mp4", ".mov", ".m4v") else "MJPG"
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*codec), self.fps,
                                           (rgb.shape[1], rgb.shape[0]))
            if not self._writer.isOpened():
                raise FerkitError(f"cannot write video {self.path}; use a .mp4 or .avi file name")
        self._writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def csv_rows(results: Iterable[Result], classes: Sequence[str]) -> Iterator[list]:
    """One row per face (or one row with empty fields for an image without faces or with an error)."""
    yield ["source", "frame", "time_s", "face", "x", "y", "width", "height", "label", "confidence",
           *[f"p_{c}" for c in classes], "error"]
    for r in results:
        head = [r.source, "" if r.frame is None else r.frame, "" if r.time_s is None else r.time_s]
        if not r.faces:
            yield head + [""] * (7 + len(classes)) + [r.error or "no face found"]
        for i, f in enumerate(r.faces):
            yield head + [i, *f.box, f.label, round(f.confidence, 6),
                          *[round(f.probabilities[c], 6) for c in classes], ""]


def write_csv(results: Iterable[Result], classes: Sequence[str], out: io.TextIOBase) -> None:
    csv.writer(out).writerows(csv_rows(results, classes))


def format_table(results: Iterable[Result]) -> str:
    lines = []
    for r in results:
        where = r.source + (f" frame {r.frame} ({r.time_s:.2f}s)" if r.frame is not None else "")
        if r.error:
            lines.append(f"{where}: error: {r.error}")
        elif not r.faces:
            lines.append(f"{where}: no face found")
        for i, f in enumerate(r.faces):
            top = sorted(f.probabilities.items(), key=lambda kv: kv[1], reverse=True)[1:3]
            others = ", ".join(f"{c} {p:.0%}" for c, p in top)
            lines.append(f"{where}: face {i} at {tuple(f.box)}: {f.label} {f.confidence:.1%} (then {others})")
    return "\n".join(lines)


def results_json(results: Sequence[Result], classes: Sequence[str]) -> str:
    return json.dumps({"classes": list(classes), "results": [r.to_dict() for r in results]}, indent=2)

"""What prediction gives, and the forms it is written in: a table, CSV, JSON, boxes drawn on the image.

:class:`Face` and :class:`Result` are the one type of ``ferkit predict``, the Python API and the server's
``POST /predict`` (whose JSON schema is generated from them).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..atomic import output_file, output_folder
from ..errors import FerkitError
from .opencv import require_cv2

# What Pillow writes a drawn image as, the first the default; the video writer's own are in .video.
DRAWN_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Photos from cameras and the web, drawn as JPEG: a phone's 12-MP photo takes 0.04 s to write as JPEG and 2.2 s as
# PNG (BENCHMARKS.md), and a PNG of it is 5 times the size. Other inputs (screenshots, scans, crops) are drawn as PNG.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".heic", ".heif", ".avif", ".webp")
JPEG_QUALITY = 95


def drawn_suffix(source: str | os.PathLike) -> str:
    """The kind of file an input is drawn as, for ``--annotate FOLDER``: JPEG for photos, else PNG."""
    return ".jpg" if Path(source).suffix.lower() in PHOTO_SUFFIXES else ".png"


def save_drawing(rgb: np.ndarray, path: Path) -> None:
    """A drawn image to ``path``, in the format its suffix names."""
    Image.fromarray(rgb).save(path, quality=JPEG_QUALITY)  # quality: JPEG's; the other formats ignore it


@dataclass
class Face:
    # The server's schema (pydantic) takes its field descriptions from the docstrings under the fields.
    __pydantic_config__ = {"use_attribute_docstrings": True}

    box: list[int]
    """[x, y, width, height] in the input image's pixels"""
    label: str
    """the most probable class"""
    confidence: float
    """the probability of that class"""
    probabilities: dict[str, float]
    """every class's probability; they sum to 1"""
    landmarks: list[list[float]] | None = None
    """[x, y] of the eye on the image's left, the other eye, the nose tip, the left and right mouth corners;
    null from detectors without landmarks (haar) and for ready crops"""
    score: float | None = None
    """the face detector's probability that this is a face; null where it gives none"""
    track: int | None = None
    """video and camera only: the person's id, kept while they stay in view"""
    smoothed: dict[str, float] | None = None
    """video and camera only: the track's probabilities smoothed over time; label and confidence come from these"""


VIDEO_ONLY = ("track", "smoothed")


@dataclass
class Result:
    __pydantic_config__ = {"use_attribute_docstrings": True}

    source: str
    """the file (for the server: the uploaded file's name), or the video or camera"""
    width: int = 0
    height: int = 0
    faces: list[Face] = field(default_factory=list)
    """largest first; empty when no face was found"""
    error: str | None = None
    """why the image could not be read; the server answers a 4xx instead, so null there"""
    frame: int | None = None
    """video and camera only: the frame's index"""
    time_s: float | None = None
    """video and camera only: the frame's time in seconds"""

    def to_dict(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if v is not None or k == "error"}
        # Photos have no tracks: their faces leave the video-only fields out instead of writing nulls.
        out["faces"] = [{k: v for k, v in f.items() if v is not None or k not in VIDEO_ONLY} for f in out["faces"]]
        return out


def results_json(results: Sequence[Result], classes: Sequence[str], prior: str = "model", tta: str = "none") -> str:
    """``prior``: the class mix the probabilities were read for (ferkit.evaluation.prior), and ``tta`` the views of
    each face they average, said in the output."""
    document = {"classes": list(classes), "prior": prior, "tta": tta, "results": [r.to_dict() for r in results]}
    return json.dumps(document, indent=2)


def csv_header(classes: Sequence[str], tracked: bool = False) -> list[str]:
    """``tracked`` (video): a ``track`` column and the smoothed probabilities after the raw ones."""
    head = ["source", "frame", "time_s", "face", *(["track"] if tracked else []), "x", "y", "width", "height"]
    smoothed = [f"smooth_{c}" for c in classes] if tracked else []
    return head + ["label", "confidence", *[f"p_{c}" for c in classes], *smoothed, "error"]


def csv_rows(results: Iterable[Result], classes: Sequence[str], tracked: bool = False) -> Iterator[list]:
    """One row per face (or one row with empty fields for an image without faces or with an error); no header."""
    for r in results:
        head = [r.source, "" if r.frame is None else r.frame, "" if r.time_s is None else r.time_s]
        if not r.faces:
            blank = 7 + len(classes) * (2 if tracked else 1) + tracked
            yield head + [""] * blank + [r.error or "no face found"]
        for i, f in enumerate(r.faces):
            # A photo read beside videos has neither track nor smoothing: blank there.
            smoothed = [round(f.smoothed[c], 6) if f.smoothed else "" for c in classes] if tracked else []
            yield head + [
                i + 1,
                *(["" if f.track is None else f.track] if tracked else []),
                *f.box,
                f.label,
                round(f.confidence, 6),
                *[round(f.probabilities[c], 6) for c in classes],
                *smoothed,
                "",
            ]


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
            who = f"face {i + 1}" if f.track is None else f"track {f.track}"
            lines.append(f"{where}: {who} at {tuple(f.box)}: {f.label} {f.confidence:.1%} (then {others})")
    return "\n".join(lines)


def format_summary(results: Sequence[Result]) -> str:
    """One line over many images: their faces, how many read as each expression, and the images without one."""
    labels = Counter(f.label for r in results for f in r.faces)
    faces = sum(labels.values())
    line = f"{len(results)} images: {faces} face{'' if faces == 1 else 's'}"
    if labels:
        line += " (" + ", ".join(f"{label} {n}" for label, n in labels.most_common()) + ")"
    for count, what in (
        (sum(not r.error and not r.faces for r in results), "without a face"),
        (sum(bool(r.error) for r in results), "not read"),
    ):
        if count:
            line += f"; {count} {what}"
    return line


class ResultStream:
    """JSON and CSV written as results come (each to a file or, for ``"-"``, stdout), so a long video holds no
    results in memory and an interruption keeps what was done; :meth:`close` ends the JSON document.

    The JSON is ``{"classes": [...], "prior": "...", "tta": "...", "results": [...]}`` with one result a line;
    ``prior`` names the class mix the probabilities were read for (ferkit.evaluation.prior), ``tta`` the views of each
    face they average.
    """

    def __init__(
        self,
        classes: Sequence[str],
        json_to: str | None = None,
        csv_to: str | None = None,
        tracked: bool = False,
        prior: str = "model",
        tta: str = "none",
    ) -> None:
        self.classes, self.tracked = classes, tracked
        self._json, self._csv, self._count = _open(json_to), _open(csv_to), 0
        if self._csv:
            self._rows = csv.writer(self._csv)
            self._rows.writerow(csv_header(classes, tracked))
        if self._json:
            head = f'"classes": {json.dumps(list(classes))}, "prior": {json.dumps(prior)}, "tta": {json.dumps(tta)}'
            self._json.write(f'{{{head}, "results": [')

    def write(self, result: Result) -> None:
        if self._json:
            self._json.write(("," if self._count else "") + "\n" + json.dumps(result.to_dict()))
        if self._csv:
            self._rows.writerows(csv_rows([result], self.classes, self.tracked))
        self._count += 1

    def close(self) -> None:
        if self._json:
            self._json.write("\n]}\n")
        for out in (self._json, self._csv):
            if out is sys.stdout:
                out.flush()
            elif out:
                out.close()


def drawing_target(out: str | os.PathLike, source: str | os.PathLike, suffixes: Sequence[str]) -> Path:
    """Where one image or video (the file ``source``, or a camera's name) is drawn for ``--annotate OUT``: OUT
    itself, or a file named after the source inside OUT when OUT is a folder (one that exists, or a name ending
    in a slash). Never the source itself."""
    target = output_file(out, "--annotate", suffixes, default_name=Path(source).stem + suffixes[0])
    if target.resolve() == Path(source).resolve():
        raise FerkitError(f"--annotate {target} is the input itself; draw into another file or a folder")
    return target


def mixed_drawing_folder(out: str | os.PathLike) -> Path:
    """The folder photos and videos read together are drawn into for ``--annotate OUT`` (made now, so each photo and
    video is drawn inside it under its own name): one file cannot hold both kinds."""
    path = Path(out)
    if path.suffix and not path.is_dir():
        raise FerkitError(
            f"--annotate {path} names a file; photos and videos read together are drawn into a folder: "
            f"name one, e.g. {path.with_suffix('')}/"
        )
    return output_folder(path, "--annotate")


def drawing_folder(out: str | os.PathLike, inputs: str | os.PathLike) -> Path:
    """The folder a folder of inputs (``inputs``) is drawn into for ``--annotate OUT``; never the inputs' own."""
    out = output_folder(out, "--annotate")
    if out.resolve() == Path(inputs).resolve():
        raise FerkitError(f"--annotate {out} is the input folder, whose files the drawings would replace; name another")
    return out


def _open(target: str | None):
    if not target:
        return None
    if target == "-":
        return sys.stdout
    try:
        return open(target, "w", newline="")  # noqa: SIM115 (closed by close())
    except OSError as e:
        raise FerkitError(f"cannot write {target}: {e.strerror or e}; name another file") from None


def face_name(face: Face, index: int) -> str:
    """How outputs meant for people name a face: its track (``#3``) in a video, else its place in the photo counted
    from 1 (largest first), as the web page numbers them."""
    return f"#{face.track}" if face.track is not None else str(index + 1)


# The web page's box colours (serve/static/app.js), so a face is drawn in one colour in a file and on the page.
COLOURS = (
    (0, 220, 0),
    (255, 140, 0),
    (30, 144, 255),
    (230, 25, 75),
    (176, 79, 220),
    (0, 188, 188),
    (240, 50, 230),
    (128, 128, 0),
)


def face_colour(face: Face, index: int) -> tuple[int, int, int]:
    """A face's colour by its number: a track keeps its colour from frame to frame."""
    number = face.track if face.track is not None else index + 1
    return COLOURS[(number - 1) % len(COLOURS)]


def draw_faces(rgb: np.ndarray, faces: Sequence[Face]) -> np.ndarray:
    """A copy of the image with each face's box and landmarks (small dots) in its colour, and a tab above the box
    saying "number: label confidence", the number the one the text, CSV and page give it."""
    cv2 = require_cv2()
    out = rgb.copy()
    thickness = max(2, round(max(rgb.shape[:2]) / 400))
    for i, face in enumerate(faces):
        x, y, w, h = face.box
        colour = face_colour(face, i)
        cv2.rectangle(out, (x, y), (x + w, y + h), colour, thickness)
        for px, py in face.landmarks or []:
            cv2.circle(out, (round(px), round(py)), max(thickness, round(w / 40)), colour, -1, cv2.LINE_AA)
        text = f"{face_name(face, i)}: {face.label} {face.confidence:.0%}"
        scale = max(0.4, w / 200)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y - th - base - 4, 0)
        left = max(0, min(x, out.shape[1] - tw - 4))  # inside the picture, not cut at its right edge
        cv2.rectangle(out, (left, top), (left + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(out, text, (left + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out

"""Photos turned into the faces ``ferkit predict`` classifies: a dataset of real photos made trainable as the
product reads them.

Each photo's largest face is found, turned upright and cut out with FER2013's framing (:mod:`.align`), and written
under the photo's own path in the output folder, so any layout (``train/<class>/``, ``test/<class>/``, a folder of
class folders) comes out the same and ``ferkit train``, ``evaluate`` and ``data check`` read it as they read the
photos. A model trained or fine-tuned on these crops meets at training the faces it will be given. Photos without a
face, and files that are not images, are written nowhere and listed in ``faces.csv`` beside the crops. faces.csv
grows photo by photo, so a run stopped part-way keeps a record of what it wrote, and ``resume`` goes on from it;
``faces.json`` records the detector's settings, so that a resumed run cannot mix faces found by another detector.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..atomic import new_folder, output_names, outside_inputs, write_atomically
from ..config import CROP_FORMATS, MARGIN
from ..data.images import FORMATS, UndecodableImage, list_images, open_image, to_rgb
from ..errors import FerkitError
from .align import face_crop
from .faces import Detection, Detector

JPEG_QUALITY = 95
RECORD = "faces.csv"
SETTINGS = "faces.json"
COLUMNS = ("photo", "face", "crop", "x", "y", "width", "height", "score", "problem")


def largest_face(rgb: np.ndarray, detector: Detector) -> tuple[np.ndarray, Detection] | None:
    """The photo's largest face as the product classifies it, and its detection; None where none is found."""
    detections = detector.detect(rgb)
    return (classified_crop(rgb, detections[0]), detections[0]) if detections else None


def classified_crop(rgb: np.ndarray, face: Detection) -> np.ndarray:
    """What the classifier is given of a detected face, as ``Predictor`` cuts it."""
    return face_crop(rgb, face, MARGIN)


@dataclass
class FaceCrops:
    """What :func:`crop_faces` did: photos read, face crops written, and the photos that gave none (their paths
    relative to the source folder)."""

    photos: int = 0
    faces: int = 0
    no_face: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)


def crop_faces(
    src: str | Path,
    out: str | Path,
    detector: Detector,
    image_format: str = "jpg",
    every_face: bool = False,
    resume: bool = False,
) -> FaceCrops:
    """Each image under ``src`` as its largest face in ``out``, at the same relative path (``image_format``'s
    suffix), with ``out/faces.csv`` recording each crop's box and score or why a photo has none. With
    ``every_face`` each face of a photo is written, largest first, as ``NAME_0``, ``NAME_1``, ...: faces to sort
    into class folders by hand. With ``resume``, ``out`` is a folder this made, maybe stopped part-way: the photos
    its faces.csv records are not read again, and what it records is counted in the result."""
    src, out = Path(src), Path(out)
    if image_format not in CROP_FORMATS:
        raise FerkitError(f"--format must be one of {', '.join(CROP_FORMATS)} (got {image_format!r})")
    photos = _photos_to_crop(src, out, resume)
    relative = [p.relative_to(src) for p in photos]
    targets = dict(zip((r.as_posix() for r in relative), output_names(relative, CROP_FORMATS[image_format])))
    done = FaceCrops(photos=len(photos))
    recorded = _recorded(out, targets, every_face, done) if resume else set()
    out.mkdir(parents=True, exist_ok=True)
    _record_detector(out, detector, resume)
    with open(out / RECORD, "a", newline="") as f:
        if f.tell() == 0:  # new, or left empty by a crash before its first line
            csv.writer(f).writerow(COLUMNS)
        left = [(photo, name) for photo, name in zip(photos, targets) if name not in recorded]
        for photo, name in tqdm(left, desc="faces", unit="photo", disable=None):
            rows = _crop_photo(photo, name, out, targets[name], detector, every_face, done)
            # A photo's rows in one write, after its crops: the record never names a crop that is not there.
            lines = io.StringIO()
            csv.writer(lines).writerows(rows)
            f.write(lines.getvalue())
            f.flush()
    return done


def _crop_photo(
    photo: Path, name: str, out: Path, target: Path, detector: Detector, every_face: bool, done: FaceCrops
) -> list[list]:
    """``photo``'s crops written (and counted in ``done``); its rows of faces.csv."""
    try:
        rgb = np.asarray(to_rgb(open_image(photo)))
    except UndecodableImage as e:
        done.unreadable.append(name)
        return [[name, "", "", "", "", "", "", "", f"unreadable: {e.reason}"]]
    faces = detector.detect(rgb)
    if not faces:
        done.no_face.append(name)
        return [[name, "", "", "", "", "", "", "", "no face found"]]
    (out / target).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, face in enumerate(faces if every_face else faces[:1]):
        crop = _crop_name(target, index, every_face)
        Image.fromarray(classified_crop(rgb, face)).save(out / crop, quality=JPEG_QUALITY)
        done.faces += 1
        score = "" if face.score is None else f"{face.score:.3f}"
        rows.append([name, index, crop.as_posix(), *(f"{v:.1f}" for v in face.box), score, ""])
    return rows


def _crop_name(target: Path, index: int, every_face: bool) -> Path:
    return target.with_name(f"{target.stem}_{index}{target.suffix}") if every_face else target


def _recorded(out: Path, targets: dict[str, Path], every_face: bool, done: FaceCrops) -> set[str]:
    """The photos ``out``'s faces.csv records, their faces and problems counted in ``done``; refused where its crops
    were named by other settings, which would mix two kinds of crop in one folder."""
    record = out / RECORD
    text = record.read_text()
    if not text.endswith("\n"):  # a line cut short by a crash: that photo is done again
        record.write_text(text[: text.rfind("\n") + 1])
    with open(record, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["photo"] in targets]  # photos since removed stay recorded
    for row in rows:
        if row["crop"]:
            expected = _crop_name(targets[row["photo"]], int(row["face"]), every_face).as_posix()
            if row["crop"] != expected:
                raise FerkitError(
                    f"--resume: {record} names the crop of {row['photo']} {row['crop']}, these options "
                    f"{expected}; give the --format and --all-faces it was made with"
                )
            done.faces += 1
        elif row["problem"] == "no face found":
            done.no_face.append(row["photo"])
        else:
            done.unreadable.append(row["photo"])
    return {row["photo"] for row in rows}


def _record_detector(out: Path, detector: Detector, resume: bool) -> None:
    """``out/faces.json`` with the detector's settings; on resume, refused where they are not the recorded ones. A
    folder made before the record existed (faces.csv, no faces.json) goes on unchecked."""
    path, settings = out / SETTINGS, {"detector": detector.settings}
    if resume and path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except ValueError:
            recorded = None
        if not isinstance(recorded, dict) or not isinstance(recorded.get("detector"), dict):
            raise FerkitError(
                f"--resume: {path} does not hold the detector settings ferkit writes there; restore it, delete it to "
                "resume unchecked, or make a new folder"
            )
        if recorded != json.loads(json.dumps(settings)):
            raise FerkitError(
                f"--resume: {path} records {_settings_text(recorded['detector'])}, these options give "
                f"{_settings_text(settings['detector'])}; give the --detector, --min-face and --face-threshold it was "
                "made with, or make a new folder"
            )
    elif not resume:
        write_atomically(path, lambda f: f.write((json.dumps(settings, indent=2) + "\n").encode()))


def _settings_text(settings: dict[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in settings.items())


def _photos_to_crop(src: Path, out: Path, resume: bool) -> list[Path]:
    """The images under ``src``, after the checks that keep any of the user's files from being mixed or replaced."""
    if not src.is_dir():
        raise FerkitError(f"{src} is not a folder; give the folder of photos to crop (any layout of class folders)")
    outside_inputs(out, src, "the crops would join the photos")
    if resume and not (out / RECORD).is_file():
        raise FerkitError(f"--resume: {out} has no {RECORD}, so it is not a folder of crops to go on with")
    if not resume:
        new_folder(out, ", or give --resume to go on with crops this command was making there")
    photos = list_images(src)
    if not photos:
        raise FerkitError(f"no images in {src} or its folders; give a folder of {FORMATS} photos")
    return photos

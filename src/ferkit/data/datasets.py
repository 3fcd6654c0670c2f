"""FER datasets in the two formats FER2013 users have, and the two evaluation protocols.

- image folders: ``train/<class>/*`` and ``test/<class>/*`` (optionally ``val/<class>/*``);
  FER2013's ``test/`` file names start with ``PublicTest_`` or ``PrivateTest_``;
- the Kaggle ``fer2013.csv`` with ``emotion``, ``pixels`` and ``Usage`` columns.

A protocol turns a dataset into three splits: ``train``, ``select`` (where the best epoch is
chosen) and ``report`` (where the final figure is measured). ``spec`` selects and reports on the
whole test split, as the specification does; ``clean`` selects on PublicTest (or ``val/``) and
reports PrivateTest (or ``test/``) once.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from ..errors import FerkitError
from .images import UndecodableImage, is_image_file, open_image

CLASSES: tuple[str, ...] = ("Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise")

_ALIASES = {
    "Angry": ("angry", "anger", "mad"),
    "Disgust": ("disgust", "disgusted", "disgusting"),
    "Fear": ("fear", "fearful", "afraid", "scared"),
    "Happy": ("happy", "happiness", "joy", "happiest"),
    "Neutral": ("neutral", "neutrality", "calm"),
    "Sad": ("sad", "sadness", "unhappy"),
    "Surprise": ("surprise", "surprised", "suprise"),
}
ALIASES: dict[str, str] = {alias: cls for cls, names in _ALIASES.items() for alias in names}
VAL_DIRS = ("val", "valid", "validation")
WHERE_TO_GET = (
    "get FER2013 from Kaggle (msambare/fer2013 image folders, or the challenge's fer2013.csv) and pass "
    "--data PATH, set $FERKIT_DATA, or put it in ./data/fer2013; accepted layouts: "
    "PATH/train/<class>/*.jpg + PATH/test/<class>/*.jpg, or a fer2013.csv with emotion,pixels,Usage columns"
)

Source = Path | np.ndarray


@dataclass
class Sample:
    source: Source  # a file, or decoded pixels (CSV rows)
    label: int
    name: str  # file path or "fer2013.csv:<row>", for error messages


@dataclass
class Splits:
    classes: tuple[str, ...]
    train: list[Sample]
    select: list[Sample]
    report: list[Sample]
    protocol: str
    names: dict[str, str] = field(default_factory=dict)  # split -> human description


def canonical_class(name: str) -> str | None:
    return ALIASES.get(name.strip().lower())


def load_image(sample: Sample) -> Image.Image:
    """Decode one sample fully (so truncated files fail here, with the file named), upright as viewers show it."""
    if isinstance(sample.source, np.ndarray):
        return Image.fromarray(sample.source)
    try:
        return open_image(sample.source)
    except UndecodableImage as e:
        raise FerkitError(
            f"cannot read image {sample.name}: {e.reason}; "
            "delete or replace it (`ferkit data check` lists every bad file)"
        ) from None


class FerDataset(Dataset):
    """(image, label) pairs; with ``skip_bad`` an unreadable file yields None for `collate_skipping` to drop.

    ``targets`` ([len(samples), classes] probabilities, e.g. distillation's) replace the labels when given.
    """

    def __init__(
        self,
        samples: list[Sample],
        transform: Callable | None = None,
        skip_bad: bool = False,
        targets: torch.Tensor | None = None,
    ) -> None:
        self.samples = samples
        self.transform = transform
        self.skip_bad = skip_bad
        self.targets = targets

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        sample = self.samples[index]
        try:
            image = load_image(sample)
        except FerkitError:
            if self.skip_bad:
                return None, sample.name
            raise
        target = sample.label if self.targets is None else self.targets[index]
        return (self.transform(image) if self.transform else image), target


def collate_skipping(batch: list) -> tuple:
    """Default collation of the readable items, plus the names of the unreadable ones."""
    good = [item for item in batch if item[0] is not None]
    bad = [name for image, name in batch if image is None]
    images, labels = default_collate(good) if good else (None, None)
    return images, labels, bad


def resolve_data_path(path: str | os.PathLike | None) -> Path:
    """The dataset location: the given path, else $FERKIT_DATA, else ./data/fer2013."""
    if path is not None:
        candidate = Path(path)
        if not candidate.exists():
            raise FerkitError(f"dataset path {candidate} does not exist; {WHERE_TO_GET}")
        return candidate
    for candidate in (os.environ.get("FERKIT_DATA"), "data/fer2013"):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise FerkitError(f"no dataset given and none found in $FERKIT_DATA or ./data/fer2013; {WHERE_TO_GET}")


def _class_dirs(split_dir: Path) -> dict[str, Path]:
    dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    unknown = [p.name for p in dirs if canonical_class(p.name) is None]
    if unknown:
        raise FerkitError(
            f"unknown class folders {unknown} in {split_dir}; rename them to one of "
            f"{[c.lower() for c in CLASSES]} (or a usual alias such as anger, happiness, sadness)"
        )
    if not dirs:
        raise FerkitError(f"{split_dir} has no class folders; expected {split_dir}/<class>/*.jpg")
    mapped: dict[str, Path] = {}
    for d in dirs:
        cls = canonical_class(d.name)
        if cls in mapped:
            raise FerkitError(f"folders {mapped[cls].name!r} and {d.name!r} in {split_dir} both mean {cls}; merge them")
        mapped[cls] = d
    return mapped


def _folder_split(split_dir: Path) -> dict[str, list[Path]]:
    return {cls: sorted(p for p in d.iterdir() if is_image_file(p)) for cls, d in _class_dirs(split_dir).items()}


def read_image_folder(root: Path) -> dict[str, dict[str, list[Path]]]:
    """split name -> canonical class -> files, for the splits present under root."""
    present = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    if is_whole_folder(root):
        raise FerkitError(
            f"{root} holds class folders but no train/ and test/ split: `ferkit evaluate --data {root}` and "
            f"`ferkit data check {root}` read it whole; to train on it, split it: `ferkit data split {root} --out "
            f"{root.name}_split`"
        )
    if "train" not in present or "test" not in present:
        raise FerkitError(
            f"{root} is not a FER image-folder dataset (found folders {sorted(present) or 'none'}); "
            "expected train/<class>/* and test/<class>/*, or pass a fer2013.csv"
        )
    splits = {"train": _folder_split(present["train"]), "test": _folder_split(present["test"])}
    for name in VAL_DIRS:
        if name in present:
            splits["val"] = _folder_split(present[name])
            break
    return splits


def _subfolders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def is_whole_folder(root: Path) -> bool:
    """A folder of class folders with no train/test split (CK+48, webfaces-dev): evaluated whole."""
    names = _subfolders(root)
    no_splits = not {"train", "test"} & {n.lower() for n in names}
    return no_splits and any(canonical_class(n) for n in names)


def check_evaluable(root: Path, classes: tuple[str, ...]) -> None:
    """Refuse a folder that is neither a dataset with splits nor a folder of class folders, naming both layouts:
    the split dataset's own error would only name the first, which a user evaluating their photos does not want."""
    names = _subfolders(root)
    if root.is_dir() and not {"train", "test"} & {n.lower() for n in names}:
        raise FerkitError(
            f"{root} has no class folders and no train/ and test/ (found folders {names or 'none'}); put its images "
            f"in folders named for the classes ({', '.join(c.lower() for c in classes)}) to evaluate it whole, "
            "or pass a FER dataset (train/<class>/ and test/<class>/, or a fer2013.csv)"
        )


def read_whole_folder(root: Path, classes: tuple[str, ...], limit_per_class: int = 0) -> tuple[list[Sample], list[str]]:
    """Every image under ``root/<class>/``, labelled by its index in ``classes``, and one line per folder left out.

    A folder whose name is no FER2013 class (CK+'s contempt), or a class the model lacks, is left out
    and said so: mapping it onto a near class would change what the figures mean.
    """
    index = {c: i for i, c in enumerate(classes)}
    samples: list[Sample] = []
    left_out: list[str] = []
    for cls, files in sorted(folder_files(root).items()):
        canonical = canonical_class(cls)
        if canonical in index:
            samples += [Sample(p, index[canonical], str(p)) for p in files]
        else:
            reason = "no FER2013 class" if canonical is None else f"{canonical} is not a class of this model"
            left_out.append(f"{root.name}/{cls}: {reason}; its {len(files)} images are left out")
    if not samples:
        raise FerkitError(f"{root} has no images in folders named for the model's classes {list(classes)}")
    return _limit(samples, limit_per_class), left_out


def folder_files(root: Path) -> dict[str, list[Path]]:
    """Each folder of ``root`` (by its own name) -> the images directly in it, sorted."""
    return {d.name: sorted(p for p in d.iterdir() if is_image_file(p)) for d in root.iterdir() if d.is_dir()}


def read_fer_csv(path: Path) -> dict[str, list[Sample]]:
    """Usage value (Training, PublicTest, PrivateTest) -> samples with decoded 48x48 pixels."""
    usages: dict[str, list[Sample]] = {}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"emotion", "pixels"} - set(reader.fieldnames or ())
        if missing:
            raise FerkitError(f"{path} lacks columns {sorted(missing)}; a FER2013 CSV has emotion,pixels,Usage")
        for row_number, row in enumerate(reader, start=2):
            name = f"{path.name}:{row_number}"
            try:
                label = int(row["emotion"])
                pixels = np.array(row["pixels"].split(), dtype=np.uint8)
                side = int(round(len(pixels) ** 0.5))
                if side * side != len(pixels) or not 0 <= label < len(CLASSES):
                    raise ValueError
            except (ValueError, TypeError):
                raise FerkitError(f"bad row {name}: need an emotion 0-6 and a square image of pixel values") from None
            usages.setdefault(row.get("Usage") or "Training", []).append(
                Sample(pixels.reshape(side, side), label, name)
            )
    return usages


def _limit(samples: list[Sample], per_class: int) -> list[Sample]:
    if per_class <= 0:
        return samples
    kept: list[Sample] = []
    seen: Counter = Counter()
    for s in samples:
        if seen[s.label] < per_class:
            kept.append(s)
            seen[s.label] += 1
    return kept


def _to_samples(by_class: dict[str, list[Path]], classes: tuple[str, ...]) -> list[Sample]:
    index = {c: i for i, c in enumerate(classes)}
    return [Sample(p, index[cls], str(p)) for cls, files in by_class.items() for p in files]


def load_splits(path: str | os.PathLike | None, protocol: str = "spec", limit_per_class: int = 0) -> Splits:
    root = resolve_data_path(path)
    if root.is_file():
        splits = _csv_splits(root, protocol)
    else:
        splits = _folder_splits(root, protocol)
    splits.train = _limit(splits.train, limit_per_class)
    splits.select = _limit(splits.select, limit_per_class)
    splits.report = splits.select if splits.report is splits.select else _limit(splits.report, limit_per_class)
    _validate(splits, root)
    return splits


def _folder_splits(root: Path, protocol: str) -> Splits:
    folders = read_image_folder(root)
    classes = tuple(c for c in CLASSES if c in folders["train"])
    extra = sorted(set(folders["test"]) - set(classes))
    if extra:
        raise FerkitError(f"test/ has classes {extra} that train/ lacks in {root}; add them to train/ or remove them")
    train = _to_samples(folders["train"], classes)
    test = _to_samples(folders["test"], classes)
    if protocol == "spec":
        return Splits(classes, train, test, test, protocol, {"select": "test", "report": "test"})
    if "val" in folders:
        val = _to_samples(folders["val"], classes)
        return Splits(classes, train, val, test, protocol, {"select": "val", "report": "test"})
    public = [s for s in test if Path(s.name).name.startswith("PublicTest_")]
    private = [s for s in test if Path(s.name).name.startswith("PrivateTest_")]
    if not public or not private:
        raise FerkitError(
            f"the clean protocol needs a val/ folder or PublicTest_/PrivateTest_ file names in {root}/test; "
            "use --protocol spec for this dataset"
        )
    return Splits(classes, train, public, private, protocol, {"select": "PublicTest", "report": "PrivateTest"})


def _csv_splits(path: Path, protocol: str) -> Splits:
    usages = read_fer_csv(path)
    train = usages.get("Training", [])
    public, private = usages.get("PublicTest", []), usages.get("PrivateTest", [])
    if protocol == "spec":
        test = public + private
        return Splits(CLASSES, train, test, test, protocol, {"select": "test", "report": "test"})
    return Splits(CLASSES, train, public, private, protocol, {"select": "PublicTest", "report": "PrivateTest"})


def _validate(splits: Splits, root: Path) -> None:
    for split in ("train", "select", "report"):
        samples = getattr(splits, split)
        if not samples:
            raise FerkitError(f"the {split} split ({splits.names.get(split, split)}) of {root} has no images")
    counts = Counter(s.label for s in splits.train)
    empty = [c for i, c in enumerate(splits.classes) if counts[i] == 0]
    if empty:
        raise FerkitError(f"classes {empty} have no training images in {root}; add images or remove the class folders")


def check_dataset(path: str | os.PathLike | None) -> dict:
    """Per-split, per-class counts plus unreadable and all-black images, decoding every file.

    A folder of class folders without splits (CK+48, webfaces-dev) is one split, ``all``; its folders that are no
    FER2013 class are named in ``left_out``, as evaluation leaves them out.
    """
    root = resolve_data_path(path)
    left_out: list[str] = []
    if root.is_file():
        split_samples = {usage: samples for usage, samples in read_fer_csv(root).items()}
    elif is_whole_folder(root):
        samples, left_out = read_whole_folder(root, CLASSES)
        split_samples = {"all": samples}
    else:
        check_evaluable(root, CLASSES)
        split_samples = {
            split: [Sample(p, CLASSES.index(cls), str(p)) for cls, files in by_class.items() for p in files]
            for split, by_class in read_image_folder(root).items()
        }
    report: dict = {"path": str(root), "splits": {}, "left_out": left_out, "unreadable": [], "black": []}
    for split, samples in split_samples.items():
        report["splits"][split] = {c: 0 for c in CLASSES} | dict(Counter(CLASSES[s.label] for s in samples))
        for s in samples:
            try:
                pixels = np.asarray(load_image(s))
            except FerkitError as e:
                report["unreadable"].append({"file": s.name, "error": str(e)})
                continue
            if pixels.max() == 0:
                report["black"].append(s.name)
    return report

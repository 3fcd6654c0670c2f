"""A folder of class folders (photos of your own, or the faces ``ferkit data faces`` cut out of them) split into
the ``train/``, ``val/`` and ``test/`` folders training reads.

Each class is split on its own, so every split keeps the classes' shares, and by a seed, so the same command makes
the same split. Files are hard-linked where the file system allows (no second copy of a large photo collection),
else copied; ``split.json`` in the new folder records the seed, the fractions and which file went where.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import new_folder, outside_inputs
from ..errors import FerkitError
from .datasets import canonical_class, folder_files, is_whole_folder

SPLITS = ("train", "val", "test")
RECORD = "split.json"


@dataclass
class SplitFolder:
    """What :func:`split_folder` wrote: images per split and class folder, and the folders it left out."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    copied: bool = False  # some files were copied: the file system would not link them


def split_folder(
    src: str | os.PathLike, out: str | os.PathLike, test: float = 0.2, val: float = 0.1, seed: int = 0
) -> SplitFolder:
    """``src``'s class folders split into ``out/train``, ``out/val`` (none when ``val`` is 0) and ``out/test``:
    of each class's images, ``test`` and ``val`` of them (rounded, at least one left for training), drawn by
    ``seed``."""
    src, out = Path(src), Path(out)
    _check(src, out, test, val)
    rng = np.random.default_rng(seed)
    done = SplitFolder(counts={name: {} for name in SPLITS if name != "val" or val})
    files: dict[str, list[str]] = {name: [] for name in done.counts}
    folders = sorted(folder_files(src).items())
    meaning: dict[str, str] = {}
    for folder, _ in folders:
        cls = canonical_class(folder)
        same = meaning.setdefault(cls or folder, folder)
        if same != folder:  # training would refuse the split; say so before writing it
            raise FerkitError(f"folders {same!r} and {folder!r} in {src} both mean {cls}; merge them")
    if not any(images for folder, images in folders if canonical_class(folder)):
        raise FerkitError(f"{src} has no images in folders named for the classes; nothing to split")
    for folder, images in folders:
        if canonical_class(folder) is None:
            done.left_out.append(f"{src.name}/{folder}: no FER2013 class; its {len(images)} images are left out")
            continue
        order = rng.permutation(len(images))
        n_test = max(0, min(round(len(images) * test), len(images) - 1))
        n_val = min(round(len(images) * val), len(images) - 1 - n_test)
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        for name, picked in parts.items():
            if name not in done.counts:
                continue
            (out / name / folder).mkdir(parents=True, exist_ok=True)
            for i in sorted(picked):
                done.copied |= _place(images[i], out / name / folder / images[i].name)
                files[name].append(f"{folder}/{images[i].name}")
            done.counts[name][folder] = len(picked)
    record = {"source": str(src.resolve()), "seed": seed, "test": test, "val": val, "files": files}
    (out / RECORD).write_text(json.dumps(record, indent=1) + "\n")
    return done


def _check(src: Path, out: Path, test: float, val: float) -> None:
    if not 0 < test < 1 or not 0 <= val < 1 or test + val >= 1:
        raise FerkitError(
            f"--test {test:g} and --val {val:g}: each a fraction of every class, --test above 0, together under 1"
        )
    if src.is_dir() and {"train", "test"} & {p.name.lower() for p in src.iterdir() if p.is_dir()}:
        raise FerkitError(f"{src} has train/ and test/ already: train on it as it is")
    if not src.is_dir() or not is_whole_folder(src):
        raise FerkitError(
            f"{src} is not a folder of class folders (angry/, happy/, ...); put each class's images in its own"
        )
    outside_inputs(out, src, "the split would join the images")
    new_folder(out)


def _place(image: Path, target: Path) -> bool:
    """``image`` at ``target``, linked, or copied where it cannot be (another file system); True if copied."""
    try:
        os.link(image, target)
        return False
    except OSError:
        shutil.copy2(image, target)
        return True

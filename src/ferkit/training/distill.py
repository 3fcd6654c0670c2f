"""Knowledge distillation from finished runs: each training image's target is part its label, part what teachers say.

The teachers (``--distill-from``) are read once, before the first epoch: each predicts every training image and its
mirror (or, with ``--distill-views scales``, the image framed tighter and looser) with its own preprocessing and
calibrated temperature, and their probabilities are averaged. That costs one
forward pass per teacher and view, once (counted in the run's PFLOP), instead of a teacher pass every step, so an
ensemble teaches for a small share of a run's compute; the price is that a target describes the image before its
augmentation. The probabilities are kept in the run folder (``teachers.pt``), so a resumed run needs neither the
teachers nor their time again, and an unreadable image (``--bad-images skip``) keeps its plain label. They are also
kept in a label cache (``--label-cache``) under a key of the teachers' bytes, the images' names, sizes and times of
change, and the views and temperature, so that another run of the same teachers on the same images (another seed, a
changed recipe) reads them instead of labelling again; its PFLOP still counts the labelling, the recipe's cost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed as dist
from ..checkpoint import atomic_save, check_classes, file_identity, load_model, model_path
from ..config import Config
from ..data.datasets import FerDataset, Sample, collate_skipping, resolve_data_path
from ..data.loaders import make_loader
from ..data.preprocess import build_test_transform
from ..errors import FerkitError
from ..evaluation.calibration import Tempered
from ..evaluation.predictions import collect_probs, tta_views
from ..model import inference_flops
from ..runtime import Speed

log = logging.getLogger("ferkit")

TEACHERS_FILE = "teachers.pt"
# Training flips and reframes, so the views are images the student learns from; how the log names them.
VIEWS = {"none": "as they are", "flip": "and their mirrors", "scales": "each framed at 85%, 100% and 115%"}
BATCH_SIZE = 256
# A teacher's classes must be the data's: the bundled model, for one, knows FER2013's seven only.
TEACHER_FIX = "give --distill-from teachers trained on these classes, or --distill-from alone to train without one"


def soft_targets(
    samples: list[Sample], classes: tuple[str, ...], cfg: Config, speed: Speed, resume: bool
) -> tuple[Tensor, float] | None:
    """Each sample's target, ``(1 - w) * one-hot label + w * teachers' mean probabilities``, [N, classes], and the
    PFLOP this run spent labelling (0 when a resumed run reads them back); None without --distill-from.

    The label smoothing of the loss applies on top, as to plain labels.
    """
    if not cfg.distill_from:
        return None
    for teacher in () if resume else cfg.distill_from:  # every process, before the label cache hashes them
        if not model_path(teacher).is_file():
            raise FerkitError(
                f"--distill-from {teacher} does not exist; give a teacher's best.pth, run folder or .safetensors "
                "file, or fer2013_resnet18 (the bundled model)"
            )
    path = Path(cfg.out) / TEACHERS_FILE
    if not resume and dist.is_main():
        probs, pflop = _labelled(cfg, samples, classes, speed)
        record = {"names": [s.name for s in samples], "teachers": list(cfg.distill_from), "views": cfg.distill_views}
        atomic_save({**record, "probs": probs, "temperature": cfg.distill_temperature}, path)
    dist.barrier()
    if resume or not dist.is_main():
        probs, pflop = _read(path, samples), 0.0
    return (1 - cfg.distill_weight) * _one_hot(samples, classes) + cfg.distill_weight * probs, pflop


def teacher_probs(
    paths: tuple[str, ...],
    samples: list[Sample],
    classes: tuple[str, ...],
    speed: Speed,
    skip_bad: bool,
    temperature: float = 1.0,
    views: str = "flip",
) -> tuple[Tensor, float]:
    """The teachers' mean probabilities for every sample over ``views`` (a TTA mode of :data:`VIEWS`), [N, classes]
    on the CPU, and their PFLOP, each teacher at its calibrated temperature times ``temperature``.

    An unreadable sample (with ``skip_bad``; else it stops here, named) keeps its one-hot label as its row.
    """
    t0, flops = time.perf_counter(), 0.0
    passes = len(tta_views(torch.zeros(1, 1, 2, 2), views))  # forward passes an image
    total = torch.zeros(len(samples), len(classes))
    for path in paths:
        log.info(f"distillation: teacher {file_identity(path)} labels {len(samples)} training images {VIEWS[views]}")
        loaded = load_model(path)
        check_classes(path, loaded.classes, classes, TEACHER_FIX)
        calibrated = float(loaded.checkpoint.get("temperature", 1.0))
        model = Tempered(loaded.model, calibrated * temperature).to(speed.device)
        dataset = _Indexed(samples, build_test_transform(loaded.config), skip_bad)
        loader = make_loader(dataset, BATCH_SIZE, speed.workers, speed.device, collate_fn=collate_skipping)
        probs, index = collect_probs(model, loader, speed.device, "fp32", views)
        total[torch.from_numpy(index)] += torch.from_numpy(probs)
        flops += passes * len(index) * inference_flops(loaded.model, loaded.config.image_size)
    read = total.sum(dim=1) > 0
    labels = _one_hot(samples, classes)
    probs = labels.clone()
    probs[read] = total[read] / len(paths)
    agree = (probs.argmax(dim=1) == labels.argmax(dim=1))[read].float().mean()
    top = probs[read].max(dim=1).values.mean()
    log.info(
        f"distillation: {len(paths)} teacher{'s' if len(paths) > 1 else ''} labelled {int(read.sum())} training images "
        f"{VIEWS[views]} in {time.perf_counter() - t0:.0f} s ({flops / 1e15:.4f} PFLOP); their mean agrees with "
        f"the label on {float(agree):.1%} of them and gives its top class {float(top):.2f} on average"
    )
    return probs, flops / 1e15


def label_cache(setting: str) -> Path | None:
    """The folder ``--label-cache`` names: ``auto``, the user's cache folder; ``off``, none."""
    if setting == "off":
        return None
    if setting != "auto":
        return Path(setting)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ferkit" / "labels"


# Raised when what a cached labelling depends on changes (how views are read, say), so that old entries are not used.
CACHE_VERSION = 1
# The labellings kept, the most recently used: a study's seeds and ablations reuse a handful, and each is about 2.7 MB
# for FER2013's training set.
CACHE_ENTRIES = 32


def _labelled(cfg: Config, samples: list[Sample], classes: tuple[str, ...], speed: Speed) -> tuple[Tensor, float]:
    """The teachers' probabilities and the PFLOP their labelling costs: read from the label cache where these
    teachers read these images before, else computed and kept there. Runs started side by side (seeds of one study)
    take turns: the second waits for the first's labels and reads them."""
    folder = label_cache(cfg.label_cache)
    key = _cache_key(cfg, samples, classes) if folder else None
    if folder is None or key is None:
        return _teach(cfg, samples, classes, speed)
    path, names = folder / f"{key}.pt", _data_names(cfg, samples)
    with _entry_held(path):
        saved = _cached(path, names)
        if saved is not None:
            with contextlib.suppress(OSError):
                path.touch()  # used now: the last to be evicted
            # train.log names the teachers' files whether they labelled now or before.
            teachers = "; ".join(file_identity(t) for t in cfg.distill_from)
            log.info(
                f"distillation: {teachers}: their probabilities for these {len(samples)} training images read from "
                f"the label cache ({path}; their labelling, {saved['pflop']:.4f} PFLOP, counts in this run's PFLOP)"
            )
            return saved["probs"], saved["pflop"]
        probs, pflop = _teach(cfg, samples, classes, speed)
        try:
            atomic_save({"names": names, "probs": probs, "pflop": pflop}, path)
        except OSError as e:  # a read-only home costs the next run the labelling, not this run
            log.warning(f"distillation: cannot keep the probabilities in the label cache {folder} ({e.strerror})")
    _evict(folder)
    return probs, pflop


def _evict(folder: Path) -> None:
    """All but the ``CACHE_ENTRIES`` most recently used labellings removed, with their lock files. Another run may
    remove some at the same time: what is gone is gone, and a lock removed from under its holder costs at most one
    labelling done twice."""
    with contextlib.suppress(OSError):
        entries = sorted(folder.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[CACHE_ENTRIES:]:
            old.unlink(missing_ok=True)
            old.with_suffix(".lock").unlink(missing_ok=True)


def _teach(cfg: Config, samples: list[Sample], classes: tuple[str, ...], speed: Speed) -> tuple[Tensor, float]:
    return teacher_probs(
        cfg.distill_from, samples, classes, speed, cfg.bad_images == "skip", cfg.distill_temperature, cfg.distill_views
    )


def _cached(path: Path, names: list[str]) -> dict | None:
    """A kept labelling of exactly these images; None where there is none (or a cut-short file, labelled again)."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError):
        return None
    return saved if saved["names"] == names else None


@contextlib.contextmanager
def _entry_held(path: Path) -> Iterator[None]:
    """One process at a time labels for a cache entry: a second run of the same labelling (another seed started
    beside the first) waits here until the first has kept its labels, instead of computing them again. Where no lock
    can be taken (no fcntl, a read-only cache folder) each run labels on its own, as without the cache."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(
                f"distillation: another run is labelling these images with these teachers; waiting for its labels "
                f"({path})"
            )
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # the lock goes with the file's closing


def _data_names(cfg: Config, samples: list[Sample]) -> list[str]:
    """The images' paths within the dataset's folder: the same images however the folder is spelled (relative,
    absolute, through a link) or wherever a clone of the project reads it from."""
    root = resolve_data_path(cfg.data)
    return [os.path.relpath(s.source, root) for s in samples]


def _cache_key(cfg: Config, samples: list[Sample], classes: tuple[str, ...]) -> str | None:
    """What the teachers' probabilities depend on, hashed; None for images read from a CSV's rows (no file to
    stat)."""
    if not all(isinstance(s.source, Path) for s in samples):
        return None
    key = hashlib.sha256()
    settings = [CACHE_VERSION, list(classes), cfg.distill_views, cfg.distill_temperature, cfg.bad_images]
    key.update(json.dumps(settings).encode())
    for teacher in cfg.distill_from:
        key.update(hashlib.sha256(model_path(teacher).read_bytes()).digest())
    for s, name in zip(samples, _data_names(cfg, samples)):
        stat = s.source.stat()
        key.update(f"{name}\0{s.label}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return key.hexdigest()[:32]


def _one_hot(samples: list[Sample], classes: tuple[str, ...]) -> Tensor:
    return F.one_hot(torch.tensor([s.label for s in samples]), len(classes)).float()


class _Indexed(FerDataset):
    """A sample's position instead of its label, so that probabilities land on their rows past skipped images."""

    def __getitem__(self, index: int):
        image, label = super().__getitem__(index)
        return (image, index) if image is not None else (image, label)


def _read(path: Path, samples: list[Sample]) -> Tensor:
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise FerkitError(
            f"cannot read the teachers' probabilities {path} ({str(e).splitlines()[0]}); start the run again "
            "(another --out) to label the training images anew"
        ) from None
    if saved["names"] != [s.name for s in samples]:
        raise FerkitError(
            f"{path} labels other training images than the data has now; resume with the data the run started "
            "with, or start a new run (another --out)"
        )
    return saved["probs"]

"""Checkpoints: written atomically (:mod:`ferkit.atomic`), and loads that check what the file is before using it.

A checkpoint holds the model weights together with the config and class names it was trained with,
so evaluation and prediction never have to be told them again: the config is the one record of the
preprocessing (``preprocess.build_test_transform`` reads it).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .atomic import write_atomically
from .bundled import BUNDLED, BUNDLED_MODELS
from .config import Config
from .errors import FerkitError
from .model import Ensemble, build_model

FORMAT = "ferkit-checkpoint"
# The two files a training run writes in its folder: the selected weights, and everything --resume needs.
BEST = "best.pth"
LAST = "last.pth"
VERSION = 2  # 2: no "arch" (it is config.arch), no best score beside the history in last.pth's state


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through the atomic writer: a crash or a full disk leaves the earlier file in place."""
    path = Path(path)
    write_atomically(
        path,
        lambda f: torch.save(obj, f),
        advice=f"earlier checkpoints in {path.parent} are intact; free disk space (or fix the "
        "folder's permissions), then --resume",
    )


def make_checkpoint(model: nn.Module, cfg: Config, classes: tuple[str, ...], **extra: Any) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "classes": list(classes),
        "config": cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


# What training records beside the weights that describes them to users (the server's /model shows it).
# An ensemble's record is its ``members``: each one's config, run record, source and, in a weighted average, its
# ``weight`` (its share; absent, all are alike). ``pflop``: the training compute behind the weights
# (:func:`ferkit.training.loop.train`; an ensemble's, its members' summed), absent where unknown.
_RUN_RECORD = ("epoch", "metrics", "select_split", "pflop")
TRAINING_RECORD = (*_RUN_RECORD, "members")
# trained_with: the command that trained the bundled models of 2026-12-02 and before, kept when they are re-written.
# source: the run a network taken out of an ensemble was trained in, so that a new ensemble names its origin.
_META_KEYS = ("classes", "config", *TRAINING_RECORD, "trained_with", "temperature", "class_counts", "source")
# What an ensemble keeps of each member's checkpoint (:mod:`ferkit.inference.ensemble`).
MEMBER_KEYS = ("config", *_RUN_RECORD, "trained_with", "temperature")


def training_record(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The ``TRAINING_RECORD`` entries a checkpoint holds."""
    return {k: ckpt[k] for k in TRAINING_RECORD if k in ckpt}


def save_weights(ckpt: dict[str, Any], path: str | os.PathLike) -> None:
    """A checkpoint as half-precision safetensors with its config, classes and training record in the header:
    half the size of fp32, and loaded without pickle."""
    from safetensors.torch import save

    tensors = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in ckpt["model"].items()}
    meta = {k: json.dumps(v) for k, v in ckpt.items() if k in _META_KEYS}
    data = save(tensors, metadata={"format": FORMAT, **meta})
    write_atomically(path, lambda f: f.write(data))


def store_calibration(
    path: str | os.PathLike, temperature: float, class_counts: dict[str, int] | None = None, **record: Any
) -> None:
    """Record ``temperature`` (:mod:`ferkit.evaluation.calibration`) and, when given, the training split's images
    per class (``class_counts``, :mod:`ferkit.evaluation.prior`) and more of the training record (``record``) in a
    ``.pth`` or ``.safetensors`` file."""
    values: dict[str, Any] = {"temperature": temperature, **record}
    if class_counts is not None:
        values["class_counts"] = class_counts
    update_record(path, values)


def update_record(path: str | os.PathLike, values: dict[str, Any]) -> None:
    """Set ``values`` (JSON-able entries beside the weights) in a ``.pth`` or ``.safetensors`` checkpoint.

    A safetensors file gets a new header in front of its tensor bytes, copied unchanged: the weights stay
    bit for bit what they were, whatever precision they are stored in.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        ckpt = read_checkpoint(path)
        ckpt.update(values)
        atomic_save(ckpt, path)
        return
    read_checkpoint(path)  # the same checks as any load: a ferkit weights file, readable
    raw = path.read_bytes()
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    header["__metadata__"].update({k: json.dumps(v) for k, v in values.items()})
    encoded = json.dumps(header, separators=(",", ":")).encode()
    # The format pads the header with spaces so that the tensor bytes start 8-byte aligned.
    encoded += b" " * (-len(encoded) % 8)
    data = len(encoded).to_bytes(8, "little") + encoded + raw[8 + size :]
    write_atomically(path, lambda f: f.write(data))


def model_path(path: str | os.PathLike | None) -> Path:
    """The file behind a ``--checkpoint`` value: a path, a training run's folder (its ``best.pth``), a bundled
    model's name, or ``None`` (the default)."""
    if path is None:
        return BUNDLED
    if str(path) in BUNDLED_MODELS and not Path(path).exists():
        return BUNDLED_MODELS[str(path)]
    path = Path(path)
    if path.is_dir():
        if (path / BEST).is_file():
            return path / BEST
        raise FerkitError(
            f"{path} is a folder without a best.pth, not a model; give a checkpoint file or a training run's folder "
            "(a dataset goes after --data)"
        )
    return path


def file_identity(name: str | os.PathLike) -> str:
    """``name``, the file it stands for and the start of that file's sha256, for logs: a bundled model's name
    stands for other weights in another release."""
    file = model_path(name)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:16]
    return f"{name} ({file}, sha256 {digest}...)"


def is_model_path(path: Path) -> bool:
    """Whether ``path`` names a model as :func:`model_path` takes one: a file ferkit writes models to (checkpoint,
    exported weights, ONNX graph) or a training run's folder."""
    return path.suffix.lower() in (".pth", ".safetensors", ".onnx") or (path / BEST).is_file()


def refuse_image(path: Path) -> None:
    """Name the commonest slip, a photo where the model goes (`ferkit evaluate photo.jpg`), once a load has failed."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError):
        return
    raise FerkitError(
        f"{path} is an image, not a model; give a checkpoint (best.pth, .safetensors, .onnx) or leave it out "
        f"for the bundled model, and read photos with `ferkit predict {path}`"
    )


def _read_weights(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        refuse_image(path)
        raise FerkitError(f"weights file {path} is unreadable ({e}); reinstall ferkit or pass --checkpoint") from None
    if meta.get("format") != FORMAT:
        raise FerkitError(f"{path} is not a ferkit weights file (no '{FORMAT}' marker in its header)")
    ckpt = {k: json.loads(v) for k, v in meta.items() if k != "format"}
    # The header holds only weights, config, classes and the training record, which no version has changed: every
    # such file reads as the current version, the bundled ones included.
    ckpt.update(
        format=FORMAT, version=VERSION, model={k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    )
    return ckpt


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and check a ferkit checkpoint (.pth, or .safetensors weights); any failure is one clear line."""
    path = Path(path)
    if not path.is_file():
        raise FerkitError(
            f"checkpoint {path} does not exist; pass the best.pth or last.pth of a training run, "
            f"or a bundled model: {', '.join(BUNDLED_MODELS)}"
        )
    if path.suffix == ".safetensors":
        return _read_weights(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refuse_image(path)
        # On bytes that are not a checkpoint the weights-only unpickler fails in many ways (KeyError, IndexError,
        # UnpicklingError with a paragraph on PyTorch's defaults); only the I/O and archive errors name the problem.
        named = isinstance(e, (OSError, RuntimeError, zipfile.BadZipFile, EOFError, ValueError))
        lines = str(e).strip().splitlines() if named else []
        reason = lines[0] if lines else "no PyTorch tensors"
        raise FerkitError(
            f"checkpoint {path} is truncated or not a ferkit checkpoint ({reason}); "
            "use another checkpoint of the run (best.pth or last.pth)"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FerkitError(f"{path} is not a ferkit checkpoint (no '{FORMAT}' marker); train one with `ferkit train`")
    if ckpt.get("version", 0) > VERSION:
        raise FerkitError(f"checkpoint {path} has format version {ckpt['version']}; upgrade ferkit to read it")
    if ckpt.get("version", 0) < VERSION:
        raise FerkitError(
            f"checkpoint {path} has the older format version {ckpt.get('version', 0)} (this ferkit reads {VERSION}); "
            "retrain, or use the ferkit version that wrote it"
        )
    return ckpt


def build_network(cfg: Config, classes: tuple[str, ...], ckpt: dict[str, Any]) -> nn.Module:
    """The untrained network a checkpoint's weights fit: ``cfg``'s, or an :class:`Ensemble` of its members'."""
    if "members" not in ckpt:
        return build_model(cfg, len(classes))
    members = ckpt["members"]
    weights = [m["weight"] for m in members] if all("weight" in m for m in members) else None
    return Ensemble([build_model(Config.from_dict(m["config"]), len(classes)) for m in members], weights)


@dataclass
class LoadedModel:
    model: nn.Module
    config: Config
    classes: tuple[str, ...]
    checkpoint: dict[str, Any]


def check_classes(
    path: str | os.PathLike,
    have: tuple[str, ...],
    expected: tuple[str, ...],
    fix: str = "use a checkpoint trained on these classes or retrain",
) -> None:
    if tuple(have) != tuple(expected):
        raise FerkitError(
            f"checkpoint {path} was trained for classes {list(have)} but the data has {list(expected)}; {fix}"
        )


def load_model(path: str | os.PathLike | None = None, expected_classes: tuple[str, ...] | None = None) -> LoadedModel:
    """A checkpoint's model in eval mode; ``path=None`` loads the model bundled with the package."""
    path = model_path(path)
    ckpt = read_checkpoint(path)
    classes = tuple(ckpt["classes"])
    if expected_classes is not None:
        check_classes(path, classes, expected_classes)
    cfg = Config.from_dict(ckpt["config"])
    model = build_network(cfg, classes, ckpt)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise FerkitError(
            f"checkpoint {path} does not fit architecture {cfg.arch!r} "
            f"({str(e).splitlines()[0]}); it was made by another model definition"
        ) from None
    model.eval()
    return LoadedModel(model, cfg, classes, ckpt)

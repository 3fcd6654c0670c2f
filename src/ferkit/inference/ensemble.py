"""Several trained models combined into one file that reads an image as the average of their probabilities
(``ferkit ensemble``; the network is :class:`ferkit.model.Ensemble`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..checkpoint import BEST, LAST, MEMBER_KEYS, load_model, make_checkpoint, model_path
from ..config import Config
from ..data.preprocess import preprocessing
from ..errors import FerkitError
from ..model import Ensemble


def _source(path: Path) -> str:
    # Every training run writes a best.pth and a last.pth, so a run's file is named by its run folder too.
    return f"{path.parent.name}/{path.name}" if path.name in (BEST, LAST) else path.name


def combine_checkpoints(paths: list[str | os.PathLike], weights: Sequence[float] | None = None) -> dict[str, Any]:
    """One checkpoint that reads images as the average of the given models' probabilities (:class:`Ensemble`).

    The models must share their classes and their preprocessing; they may differ in architecture and width. An
    ensemble among them contributes its members. ``weights``: each model's share of the average, in the order of
    ``paths`` (any positive numbers, scaled to sum to 1; an ensemble's share is split among its members as it
    weighs them); ``None`` weighs the models alike. The result has no temperature of its own: averaging softens
    the probabilities, so fit one with ``ferkit calibrate``. ``config`` (the preprocessing every later step
    reads) is the first model's; each member's own config and training record are kept under ``members`` (with
    its ``weight`` where the shares differ), and their training compute summed in ``pflop`` when each records
    its own.
    """
    if len(paths) < 2:
        raise FerkitError("an ensemble needs at least two checkpoints")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths):
        raise FerkitError(f"--weights: {len(weights)} weights for {len(paths)} models; give one for each model")
    if not all(math.isfinite(w) and w > 0 for w in weights):
        raise FerkitError(f"--weights {' '.join(map(str, weights))}: each model's weight must be a positive number")
    files = [model_path(p) for p in paths]
    onnx = [str(p) for p, f in zip(paths, files) if f.suffix == ".onnx"]
    if onnx:
        raise FerkitError(
            f"{', '.join(onnx)}: an ONNX graph cannot be combined; pass the .pth or .safetensors it was exported from"
        )
    loaded = [(f, load_model(f)) for f in files]
    (first, base), members, networks, shares = loaded[0], [], [], []
    for (path, model), weight in zip(loaded, weights):
        if model.classes != base.classes:
            raise FerkitError(
                f"{path} has classes {list(model.classes)} but {first} has {list(base.classes)}; "
                "an ensemble's models must be trained for the same classes"
            )
        ours, theirs = preprocessing(model.config), preprocessing(base.config)
        if ours != theirs:
            differ = {k: [theirs[k], ours[k]] for k in ours if ours[k] != theirs[k]}
            raise FerkitError(
                f"{path} reads images otherwise than {first} ({differ}, {first.name}'s first); "
                "an ensemble's models must share their preprocessing: combine runs trained at the same image size"
            )
        if isinstance(model.model, Ensemble):
            inner = model.model.weights or [1 / len(model.model.members)] * len(model.model.members)
            members += [{k: v for k, v in m.items() if k != "weight"} for m in model.checkpoint["members"]]
            networks += model.model.members
            shares += [weight * w for w in inner]
        else:
            members.append(
                {k: model.checkpoint[k] for k in MEMBER_KEYS if k in model.checkpoint}
                | {"source": model.checkpoint.get("source") or _source(path)}
            )
            networks.append(model.model)
            shares.append(weight)
    shares = [w / sum(shares) for w in shares]
    # Equal shares are recorded as no weights, so an even average reads and writes as it always has.
    if max(shares) - min(shares) > 1e-9:
        members = [m | {"weight": w} for m, w in zip(members, shares)]
    else:
        shares = None
    costs = [m.get("pflop") for m in members]
    cost = {"pflop": sum(costs)} if None not in costs else {}  # only a total every member records
    return make_checkpoint(Ensemble(networks, shares), base.config, base.classes, members=members, **cost)


def member_checkpoint(path: str | os.PathLike | None, index: int) -> dict[str, Any]:
    """Network ``index`` (from 0) of an ensemble as a model of its own: its weights, config and training record as
    the ensemble kept them (its source, the run it came from, included), and the ensemble's training class mix. The
    ensemble's temperature was fitted for the average, so the network keeps only a temperature of its own, if it had
    one."""
    loaded = load_model(path)
    if not isinstance(loaded.model, Ensemble):
        raise FerkitError(
            f"{model_path(path)} is a single network, not an ensemble; --member takes one out of an ensemble"
        )
    members = loaded.checkpoint["members"]
    if not 0 <= index < len(members):
        names = ", ".join(f"{i}: {m.get('source', '?')}" for i, m in enumerate(members))
        raise FerkitError(f"--member {index}: {model_path(path)} has {len(members)} networks ({names})")
    record = members[index]
    extra = {k: record[k] for k in (*MEMBER_KEYS, "source") if k in record and k != "config"}
    if "class_counts" in loaded.checkpoint:
        extra["class_counts"] = loaded.checkpoint["class_counts"]
    return make_checkpoint(loaded.model.members[index], Config.from_dict(record["config"]), loaded.classes, **extra)

"""What a model file says about itself: its network, classes, preprocessing, temperature and training record, as
``ferkit info`` prints it and the server's ``/model`` answers it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.preprocess import preprocessing
from .loading import InferenceModel
from .predict import Predictor


def describe_model(model: InferenceModel | Predictor) -> dict[str, Any]:
    """``model``'s classes and config, and what training recorded with its weights."""
    cfg, record = model.config, model.record
    return {
        "checkpoint": model.source.name if model.source is not None else None,
        "classes": list(model.classes),
        "arch": cfg.arch,
        "config": cfg.to_dict(),
        "preprocess": preprocessing(cfg),
        "epoch": record.get("epoch"),
        "metrics": record.get("metrics"),
        "select_split": record.get("select_split"),
        "pflop": record.get("pflop"),
        "init_from": cfg.init_from,
        "members": [
            {
                "source": m["source"],
                "arch": m["config"]["arch"],
                "width": m["config"]["width"],
                **{k: m.get(k) for k in ("epoch", "metrics", "select_split", "pflop", "weight")},
                "init_from": m["config"].get("init_from"),
            }
            for m in record.get("members", [])
        ],
        # Both wrap the network in its stored temperature (evaluation.calibration.Tempered).
        "temperature": getattr(model.model, "temperature", 1.0),
        "prior": model.prior,
        # A file is read plainly; a predictor may read each face through several views.
        "tta": model.tta if isinstance(model, Predictor) else "none",
    }


def format_model_info(info: dict[str, Any]) -> str:
    """:func:`describe_model`'s answer as lines for a person."""
    pre, members = info["preprocess"], info["members"]
    network = f"{info['arch']} width {info['config']['width']}"
    if members:
        weighted = members[0]["weight"] is not None
        network = f"the {'weighted ' if weighted else ''}average of {len(members)} networks: " + ", ".join(
            f"{m['arch']} width {m['width']}" + (f" (weight {m['weight']:.3g})" if weighted else "") for m in members
        )
    lines = [
        f"{info['checkpoint']}: {network}",
        f"  classes: {', '.join(info['classes'])}",
        f"  reads faces at {pre['image_size']}x{pre['image_size']}"
        + (" grey" if pre["grey"] else " colour")
        + (", equalized" if pre["equalize"] else "")
        + f", mean {_numbers(pre['mean'])}, std {_numbers(pre['std'])}",
        f"  temperature {info['temperature']:.3f}"
        + (" (fitted by ferkit calibrate)" if info["temperature"] != 1.0 else " (not calibrated)")
        + f"; predict reads it for --prior {info['prior']}",
    ]
    if not members or info["pflop"] is not None or info["metrics"]:
        lines.append(f"  trained: {_run(info)}")
    lines += [f"  network {i} ({m['source']}): {_run(m)}" for i, m in enumerate(members)]
    return "\n".join(lines)


def _run(record: dict[str, Any]) -> str:
    parts = []
    if record.get("epoch") is not None:
        # A fine-tuned network's epochs count from its start, which the reader should know of.
        start = record.get("init_from")
        parts.append(f"epoch {record['epoch']}" + (f" after starting from {Path(start).name}" if start else ""))
    if record.get("metrics"):
        m = record["metrics"]
        parts.append(f"{record['select_split']} accuracy {m['accuracy']:.2%}, macro F1 {m['macro_f1']:.3f}")
    parts.append(f"{record['pflop']:.3f} PFLOP" if record.get("pflop") is not None else "training PFLOP not recorded")
    return ", ".join(parts)


def _numbers(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values)

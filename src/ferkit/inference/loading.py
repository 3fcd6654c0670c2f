"""Models ready to classify, from any file ferkit writes or a bundled model's name; evaluation, prediction
and the server all load through :func:`load_for_inference`.

``.pth`` checkpoints and ``.safetensors`` weights run in PyTorch; ``.onnx`` files (fp32 or int8) run in
onnxruntime behind the ``nn.Module`` call interface, so that everything downstream (TTA, batching,
metrics) treats both back ends alike. Every model comes wrapped in its stored temperature
(:class:`~ferkit.evaluation.calibration.Tempered`; 1 when the file has none), so every caller reads calibrated
probabilities, read for the class mix asked for (``prior``, :mod:`ferkit.evaluation.prior`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..checkpoint import load_model, model_path, refuse_image, training_record
from ..config import BACKENDS, Config
from ..errors import FerkitError
from ..evaluation.calibration import Tempered
from ..evaluation.prior import DEFAULT_PRIOR, resolve_prior
from .export import CLASS_COUNTS_KEY, RECORD_KEY, TEMPERATURE_KEY, to_onnx_bytes


class OnnxRuntimeModel(nn.Module):
    """Runs an exported graph with onnxruntime behind the ``nn.Module`` call interface."""

    def __init__(self, model: bytes | str | os.PathLike, threads: int = 0) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("--backend onnxruntime needs onnxruntime: pip install 'ferkit[onnx]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # onnxruntime's threads otherwise spin after each run and take the cores from the face detector
        # that runs next: photo end to end went from 51 to 76 ms on 2 cores with spinning on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable graphs
            if not isinstance(model, bytes):
                refuse_image(Path(model))
            raise FerkitError(
                f"cannot load ONNX model {model if not isinstance(model, bytes) else ''}: "
                f"{str(e).splitlines()[0]}; export it again with `ferkit export`"
            ) from None
        self.meta = self.session.get_modelmeta().custom_metadata_map
        self.precision = "int8" if "ferkit_quantization" in self.meta else "fp32"
        self._input = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self._input: array})[0])


@dataclass
class InferenceModel:
    model: nn.Module
    config: Config
    classes: tuple[str, ...]
    device: str  # where to run it: "cpu" for onnxruntime, else the one asked for
    source: Path  # the file it was read from
    record: dict[str, Any] = field(default_factory=dict)  # TRAINING_RECORD's entries in the file
    temperature: float = 1.0  # what ``model`` divides its logits by
    prior: str = "model"  # the class mix its probabilities are read for (``auto`` resolved)
    class_counts: dict[str, int] | None = None  # its training split's images per class, when the file records them


def load_for_inference(
    path: str | os.PathLike | None, backend: str = "auto", device: str = "auto", prior: str = DEFAULT_PRIOR
) -> InferenceModel:
    """Any model file ferkit writes, or a bundled model's name (``None``: the default bundled model).

    ``backend``: ``auto`` runs ``.onnx`` files with onnxruntime and checkpoints with PyTorch;
    ``onnxruntime`` exports PyTorch checkpoints in memory first. onnxruntime runs on the CPU here.
    ``prior``: the class mix to read for (:mod:`ferkit.evaluation.prior`); the default keeps the model's own.
    """
    if backend not in BACKENDS:
        raise FerkitError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    path = model_path(path)
    is_onnx = path.suffix.lower() == ".onnx"
    if is_onnx and backend == "torch":
        raise FerkitError(f"{path} is an ONNX model; use --backend onnxruntime or a .pth checkpoint")
    onnxruntime = is_onnx or backend == "onnxruntime"
    if onnxruntime and device == "cuda":
        raise FerkitError(
            "the onnxruntime back end runs on the CPU; drop --device cuda or use --backend torch with a .pth checkpoint"
        )
    if is_onnx:
        return load_onnx(path, prior)
    loaded = load_model(path)
    record = training_record(loaded.checkpoint)
    model = OnnxRuntimeModel(to_onnx_bytes(loaded)) if onnxruntime else loaded.model
    temperature = float(loaded.checkpoint.get("temperature", 1.0))
    counts = loaded.checkpoint.get("class_counts")
    used, shift = resolve_prior(prior, loaded.classes, counts, path)
    return InferenceModel(
        Tempered(model, temperature, shift),
        loaded.config,
        loaded.classes,
        "cpu" if onnxruntime else device,
        path,
        record,
        temperature,
        used,
        counts,
    )


def load_onnx(path: Path, prior: str = DEFAULT_PRIOR) -> InferenceModel:
    """An exported model with the config and classes stored in its metadata."""
    if not path.is_file():
        raise FerkitError(f"ONNX model {path} does not exist; write one with `ferkit export CKPT --format onnx`")
    model = OnnxRuntimeModel(path)
    if "ferkit_classes" not in model.meta:
        raise FerkitError(f"{path} has no ferkit metadata (class names, preprocessing); export it with `ferkit export`")
    config = Config.from_dict(json.loads(model.meta["ferkit_config"]))
    temperature = float(model.meta.get(TEMPERATURE_KEY, 1.0))
    classes = tuple(json.loads(model.meta["ferkit_classes"]))
    counts = json.loads(model.meta[CLASS_COUNTS_KEY]) if CLASS_COUNTS_KEY in model.meta else None
    record = json.loads(model.meta.get(RECORD_KEY, "{}"))  # files exported before 2026-12-05 have none
    used, shift = resolve_prior(prior, classes, counts, path)
    return InferenceModel(
        Tempered(model, temperature, shift), config, classes, "cpu", path, record, temperature, used, counts
    )

"""ONNX export of a checkpoint, and an onnxruntime-backed module that stands in for the PyTorch model.

The exported file carries the class names, preprocessing and training config as ONNX metadata, so
``ferkit predict --checkpoint model.onnx`` needs nothing else. The batch dimension is dynamic.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .checkpoint import LoadedModel, load_model
from .config import Config
from .errors import FerkitError

# Opset 18 is what torch.export-based exporting targets natively; onnxruntime >= 1.14 runs it.
OPSET = 18


def _onnx_modules():
    try:
        import onnx
        import onnxscript  # noqa: F401  (the torch.export-based exporter needs it)
    except ImportError:
        raise FerkitError("ONNX export needs onnx and onnxscript: pip install 'ferkit[onnx]'") from None
    return onnx


def to_onnx_bytes(loaded: LoadedModel) -> bytes:
    """The model as a serialised ONNX graph with dynamic batch and ferkit's metadata."""
    onnx = _onnx_modules()
    size = loaded.config.image_size
    example = (torch.zeros(2, 3, size, size),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(loaded.model.eval().cpu(), example, input_names=["image"],
                                    output_names=["logits"], opset_version=OPSET, dynamo=True, verbose=False,
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    proto = program.model_proto
    meta = {"ferkit_classes": json.dumps(list(loaded.classes)),
            "ferkit_preprocess": json.dumps(loaded.checkpoint["preprocess"]),
            "ferkit_config": json.dumps(loaded.config.to_dict()),
            "ferkit_arch": loaded.checkpoint["arch"]}
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``checkpoint`` as ONNX (default: beside it, same stem) and return the path."""
    out = Path(out) if out is not None else Path(checkpoint).with_suffix(".onnx")
    data = to_onnx_bytes(load_model(checkpoint))
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise FerkitError(f"cannot write {out}: {e.strerror or e}") from None
    return out


class OnnxRuntimeModel(nn.Module):
    """Runs an exported graph with onnxruntime behind the ``nn.Module`` call interface.

    Evaluation and prediction then treat both back ends alike (TTA, batching, metrics).
    """

    def __init__(self, model: bytes | str | os.PathLike, threads: int = 0) -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise FerkitError("--backend onnxruntime needs onnxruntime: pip install 'ferkit[onnx]'") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        source = model if isinstance(model, bytes) else str(model)
        try:
            self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors for unreadable graphs
            raise FerkitError(f"cannot load ONNX model {model if not isinstance(model, bytes) else ''}: "
                              f"{str(e).splitlines()[0]}; export it again with `ferkit export`") from None
        self.meta = self.session.get_modelmeta().custom_metadata_map
        self._input = self.session.get_inputs()[0].name

    def forward(self, x: Tensor) -> Tensor:
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self._input: array})[0])


def load_onnx(path: str | os.PathLike) -> tuple[OnnxRuntimeModel, Config, tuple[str, ...]]:
    """An exported model with the config and classes stored in its metadata."""
    if not Path(path).is_file():
        raise FerkitError(f"ONNX model {path} does not exist; write one with `ferkit export CKPT --format onnx`")
    model = OnnxRuntimeModel(path)
    if "ferkit_classes" not in model.meta:
        raise FerkitError(f"{path} has no ferkit metadata (class names, preprocessing); "
                          "export it with `ferkit export`")
    return model, Config.from_dict(json.loads(model.meta["ferkit_config"])), tuple(json.loads(model.meta["ferkit_classes"]))

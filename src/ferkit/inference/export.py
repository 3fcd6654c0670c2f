"""ONNX export of a checkpoint (fp32 or int8); :mod:`ferkit.inference` runs the exported files.

The exported file carries the class names, preprocessing, training config and training record as ONNX
metadata, so ``ferkit predict --checkpoint model.onnx`` needs nothing else. The batch dimension is dynamic.

int8 is onnxruntime's static quantization (QDQ, per-channel weights, activation ranges calibrated on
training images through the checkpoint's test preprocessing). The first convolution and the
classifier (each member's, in an ensemble) stay fp32: quantizing the raw-pixel input and the logits
cost accuracy on PublicTest for no measurable speed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import output_file, write_atomically
from ..bundled import BUNDLED
from ..checkpoint import LoadedModel, check_classes, load_model, model_path, training_record
from ..config import CALIBRATION_IMAGES
from ..data.datasets import FerDataset, load_splits
from ..data.preprocess import build_test_transform, preprocessing
from ..errors import FerkitError

# Opset 18 is what torch.export-based exporting targets natively; onnxruntime >= 1.14 runs it.
OPSET = 18
TEMPERATURE_KEY = "ferkit_temperature"
CLASS_COUNTS_KEY = "ferkit_class_counts"
RECORD_KEY = "ferkit_record"  # what training recorded (epoch, selection metrics, an ensemble's members)


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
        program = torch.onnx.export(
            loaded.model.eval().cpu(),
            example,
            input_names=["image"],
            output_names=["logits"],
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
        )
    proto = program.model_proto
    meta = {
        "ferkit_classes": json.dumps(list(loaded.classes)),
        "ferkit_preprocess": json.dumps(preprocessing(loaded.config)),
        "ferkit_config": json.dumps(loaded.config.to_dict()),
        "ferkit_arch": loaded.config.arch,
        RECORD_KEY: json.dumps(training_record(loaded.checkpoint)),
    }
    for key, onnx_key in (("temperature", TEMPERATURE_KEY), ("class_counts", CLASS_COUNTS_KEY)):
        if key in loaded.checkpoint:
            meta[onnx_key] = json.dumps(loaded.checkpoint[key])
    set_metadata(proto, meta)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def set_metadata(proto, meta: dict[str, str]) -> None:
    """Set ``meta`` in an ONNX model's metadata, replacing entries of the same keys."""
    kept = [(e.key, e.value) for e in proto.metadata_props if e.key not in meta]
    del proto.metadata_props[:]
    for key, value in [*kept, *meta.items()]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def store_onnx_calibration(path: Path, temperature: float, class_counts: dict[str, int] | None = None) -> None:
    """Write ``temperature`` and, when given, ``class_counts`` into an ONNX file's metadata, atomically; the graph
    and its weights are untouched."""
    onnx = _onnx_modules()
    proto = onnx.load(str(path))
    meta = {TEMPERATURE_KEY: json.dumps(temperature)}
    if class_counts is not None:
        meta[CLASS_COUNTS_KEY] = json.dumps(class_counts)
    set_metadata(proto, meta)
    data = proto.SerializeToString()
    write_atomically(path, lambda f: f.write(data))


def calibration_images(loaded: LoadedModel, data: str | os.PathLike | None, count: int) -> np.ndarray:
    """``count`` training images drawn with the checkpoint's seed, preprocessed as at inference.

    Unreadable files are skipped: a few bad images must not stop an export.
    """
    if count < 1:
        raise FerkitError(f"--calibration-images must be at least 1, got {count}")
    cfg = loaded.config
    if data is None and cfg.data and Path(cfg.data).exists():
        data = cfg.data  # else load_splits looks in $FERKIT_DATA and ./data/fer2013
    try:
        splits = load_splits(data, cfg.protocol)
    except FerkitError as e:
        raise FerkitError(
            f"int8 calibration needs training images: {e} (for export: --calibration-data PATH)"
        ) from None
    check_classes(data or "the calibration data", loaded.classes, splits.classes)
    picked = np.random.default_rng(cfg.seed).permutation(len(splits.train))[:count]
    dataset = FerDataset([splits.train[i] for i in picked], build_test_transform(cfg), skip_bad=True)
    images = [image.numpy() for image, _ in (dataset[i] for i in range(len(dataset))) if image is not None]
    if not images:
        raise FerkitError(
            f"none of the {len(picked)} calibration images could be read; check the dataset with `ferkit data check`"
        )
    return np.stack(images)


class _Batches:
    """The calibration images in batches, as onnxruntime's CalibrationDataReader protocol asks."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 64) -> None:
        self._batches = iter([{input_name: images[i : i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize_int8(model: bytes, images: np.ndarray) -> bytes:
    """A statically quantized copy of an fp32 ONNX graph; the metadata travels with it."""
    onnx = _onnx_modules()
    try:
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quant_pre_process,
            quantize_static,
        )
    except ImportError:
        raise FerkitError("int8 export needs onnxruntime: pip install 'ferkit[onnx]'") from None
    with tempfile.TemporaryDirectory() as tmp:
        fp32, prepared, out = (Path(tmp) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(model)
        quant_pre_process(fp32, prepared)  # shape inference and graph fusion, as quantization expects
        graph = onnx.load(prepared).graph
        # The convolutions that read the image (one per member of an ensemble) and the classifiers stay fp32.
        stems = [n.name for n in graph.node if n.op_type == "Conv" and graph.input[0].name in n.input]
        head = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
        quantize_static(
            prepared,
            out,
            _Batches(images, graph.input[0].name),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=stems + head,
        )
        proto = onnx.load(out)
    quantization = {"type": "int8 static QDQ, per-channel weights", "calibration_images": len(images)}
    set_metadata(proto, {"ferkit_quantization": json.dumps(quantization)})
    return proto.SerializeToString()


def output_path(checkpoint: str | os.PathLike | None, suffix: str, out: str | os.PathLike | None = None) -> Path:
    """Where an export goes: ``out``, or the checkpoint's name with ``suffix`` inside ``out`` when that is a
    folder; by default beside the checkpoint (a bundled model's in the current folder, not inside the installed
    package)."""
    source = model_path(checkpoint)
    if out is not None:
        return output_file(out, "--out", (suffix[suffix.rindex(".") :],), default_name=source.stem + suffix)
    folder = Path() if source.parent == BUNDLED.parent else source.parent
    return folder / (source.stem + suffix)


def export_onnx(
    checkpoint: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    int8: bool = False,
    calibration_data: str | os.PathLike | None = None,
    calibration_count: int = CALIBRATION_IMAGES,
) -> Path:
    """Write ``checkpoint`` (``None``: the bundled model) as ONNX and return the path.

    ``out`` and the default path are :func:`output_path`'s, with ``.onnx`` (``.int8.onnx`` for int8). int8 calibrates on
    ``calibration_count`` training images of ``calibration_data`` (default: the dataset the checkpoint was trained on).
    """
    out = output_path(checkpoint, ".int8.onnx" if int8 else ".onnx", out)
    loaded = load_model(checkpoint)
    images = calibration_images(loaded, calibration_data, calibration_count) if int8 else None
    data = to_onnx_bytes(loaded)
    if images is not None:
        data = quantize_int8(data, images)
    write_atomically(out, lambda f: f.write(data))
    return out

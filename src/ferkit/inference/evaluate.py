"""A model file measured on a labelled dataset (``ferkit evaluate``), and its temperature fitted (``ferkit
calibrate``)."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np

from ..atomic import output_folder
from ..checkpoint import check_classes, store_calibration
from ..config import EVAL_BATCH_SIZE, FACES, Config
from ..data.datasets import (
    FerDataset,
    Sample,
    check_evaluable,
    is_whole_folder,
    load_image,
    load_splits,
    read_whole_folder,
    resolve_data_path,
)
from ..data.loaders import make_loader
from ..data.preprocess import build_test_transform
from ..errors import FerkitError
from ..evaluation.calibration import fit_temperature, temper
from ..evaluation.metrics import compute_metrics, paired_difference, write_report
from ..evaluation.predictions import collect_probs, inference_precision
from ..evaluation.prior import DEFAULT_PRIOR, PRIORS, carried_counts, class_counts
from ..plots import plot_reliability
from ..runtime import loader_workers, resolve_device
from .export import store_onnx_calibration
from .facecrops import largest_face
from .faces import Detector
from .loading import InferenceModel, load_for_inference

WHOLE = "all"  # the split name of a folder of class folders evaluated whole


def sample_probs(
    loaded: InferenceModel, samples: list[Sample], batch_size: int, workers: int, precision: str | None, tta: str
) -> tuple[np.ndarray, np.ndarray, str]:
    """Probabilities, labels and the precision they were computed in, for ``samples`` through ``loaded``."""
    dev = resolve_device(loaded.device)
    precision = inference_precision(loaded.model, loaded.config, precision)
    dataset = FerDataset(samples, build_test_transform(loaded.config))
    loader = make_loader(dataset, batch_size, loader_workers(workers), dev)
    probs, labels = collect_probs(loaded.model.to(dev), loader, dev, precision, tta)
    return probs, labels, precision


def detected_faces(samples: list[Sample], detector: Detector) -> tuple[list[Sample], int]:
    """Each photo's largest face as the product classifies it: found, turned upright and framed as FER2013's faces
    are. A photo where no face is found is read whole, so every photo keeps its label in the figures; returns the
    samples and how many of them had a face."""
    faces, found = [], 0
    for sample in samples:
        rgb = np.asarray(load_image(sample).convert("RGB"))
        face = largest_face(rgb, detector)
        found += face is not None
        faces.append(Sample(np.ascontiguousarray(face[0] if face else rgb), sample.label, sample.name))
    return faces, found


def evaluation_samples(
    loaded: InferenceModel, data: str | None, split: str, protocol: str | None = None, limit_per_class: int = 0
) -> tuple[list[Sample], str, str, list[str]]:
    """The images ``loaded`` is measured on (:func:`evaluate_checkpoint` says which), the split's and protocol's
    names, and the folders left out for having no class of the model."""
    root = resolve_data_path(data if data is not None else loaded.config.data)
    if is_whole_folder(root):
        samples, left_out = read_whole_folder(root, loaded.classes, limit_per_class)
        return samples, WHOLE, "none", left_out
    check_evaluable(root, loaded.classes)
    splits = load_splits(root, protocol or loaded.config.protocol, limit_per_class)
    check_classes(loaded.source, loaded.classes, splits.classes)
    return getattr(splits, split), splits.names.get(split, split), splits.protocol, []


def evaluate_checkpoint(
    checkpoint: str | os.PathLike | None = None,
    data: str | None = None,
    split: str = "report",
    protocol: str | None = None,
    tta: str = "none",
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int = Config.workers,
    device: str = "auto",
    limit_per_class: int = 0,
    out_dir: str | os.PathLike | None = None,
    precision: str | None = None,
    min_support: int = 1,
    detector: Detector | None = None,
    prior: str = DEFAULT_PRIOR,
    against: str | os.PathLike | None = None,
) -> dict:
    """Metrics of a checkpoint on a split of any supported dataset, with its own preprocessing and temperature.

    ``split`` is ``report`` (PrivateTest under the clean protocol, test/ under spec), ``select`` or ``train``;
    a folder of class folders with no splits (CK+48, webfaces-dev) is evaluated whole, as split ``all``, its
    folders without a class of the model left out (``metrics["left_out"]`` says which).
    ``checkpoint`` is a ``.pth``, ``.safetensors`` or ``.onnx`` (fp32 or int8) file; ``None`` evaluates
    the model bundled with ferkit. ``precision`` (fp32 or bf16) defaults to the checkpoint's evaluation precision.
    ``min_support``: macro recall averages the classes with at least this many images. With a ``detector``, each
    image is read as ``ferkit predict`` reads a photo (:func:`detected_faces`; ``metrics["faces_found"]`` counts
    the photos with a face), instead of being taken as the face itself. ``prior``: the class mix the model's
    probabilities are read for (:mod:`ferkit.evaluation.prior`); by default its training data's own. ``against``:
    another model of the same classes read on the same images (the same detected faces, TTA, precision and prior),
    ``metrics["against"]`` holding its figures and this model's minus its with paired 95% intervals
    (:func:`~ferkit.evaluation.metrics.paired_difference`): whether a gap of a few images is a gap at all.
    """
    if out_dir is not None:
        out_dir = output_folder(out_dir, "--out")
    loaded = load_for_inference(checkpoint, device=device, prior=prior)
    classes = loaded.classes
    samples, split_name, protocol_name, left_out = evaluation_samples(loaded, data, split, protocol, limit_per_class)
    found = None
    if detector is not None:
        samples, found = detected_faces(samples, detector)
    probs, labels, precision = sample_probs(loaded, samples, batch_size, workers, precision, tta)
    metrics = compute_metrics(labels, probs, classes, min_support)
    if against is not None:
        other = load_for_inference(against, device=device, prior=prior)
        if other.classes != classes:
            raise FerkitError(
                f"--against {against} is a model of classes {list(other.classes)}, {loaded.source.name} of "
                f"{list(classes)}; compare two models of the same classes"
            )
        other_probs = sample_probs(other, samples, batch_size, workers, precision, tta)[0]
        theirs = compute_metrics(labels, other_probs, classes, min_support)
        counted = [classes.index(c) for c in metrics["macro_classes"]]
        metrics["against"] = {
            "checkpoint": str(other.source),
            **{k: theirs[k] for k in ("accuracy", "macro_recall", "macro_f1", "ece")},
            "temperature": other.temperature,
            "difference": paired_difference(labels, probs.argmax(1), other_probs.argmax(1), counted),
        }
    metrics.update(
        split=split_name,
        protocol=protocol_name,
        faces=FACES[detector is not None],
        faces_found=found,
        tta=tta,
        checkpoint=str(loaded.source),
        precision=precision,
        temperature=loaded.temperature,
        prior=loaded.prior,
        left_out=left_out,
    )
    if out_dir is not None:
        # A user's own weights (``neutral=5,...``) make no file name; they are in the JSON.
        mix = "" if loaded.prior == "model" else f"_prior_{loaded.prior if loaded.prior in PRIORS else 'given'}"
        stem = f"eval_{metrics['split']}{'' if tta == 'none' else f'_{tta}'}{'_detected' if detector else ''}{mix}"
        title = f"{metrics['split']} ({protocol_name} protocol, TTA {tta}): acc {metrics['accuracy']:.3f}"
        write_report(metrics, classes, out_dir, stem, title)
        # Only here, not in training's report: a run folder's files stay what they were.
        reliability_title = f"{title}, T {loaded.temperature:.3f}, ECE {metrics['ece']:.3f}"
        plot_reliability(metrics["reliability"], out_dir / f"{stem}_reliability.png", reliability_title)
    return metrics


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    data: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    workers: int = Config.workers,
    device: str = "auto",
    precision: str | None = None,
    temperature: float | None = None,
) -> dict:
    """Fit the temperature of a model file on its protocol's selection split and write it into the file, with
    the training split's images per class (the class mix its probabilities carry, :mod:`ferkit.evaluation.prior`).
    A file that records no selection metrics of its own (an ensemble: each network records its own) gets those
    just measured, so that it can say how it reads the split it was chosen on.

    The fit is on the file's raw logits (whatever temperature it stores is ignored, so calibrating twice gives
    the same T), through the back end that will run the file. ``temperature`` writes that value instead of
    fitting one: the fp32 model's T onto its int8 twin, whose weights stay untouched.
    Returns the temperatures before and after, and the selection-split NLL and ECE at each.
    """
    loaded = load_for_inference(checkpoint, device=device)
    root = resolve_data_path(data if data is not None else loaded.config.data)
    if is_whole_folder(root):
        raise FerkitError(
            f"{root} has no selection split to fit a temperature on; pass the dataset the model was trained on"
        )
    splits = load_splits(root, loaded.config.protocol)
    check_classes(loaded.source, loaded.classes, splits.classes)
    raw = replace(loaded, model=loaded.model.model, temperature=1.0)
    probs, labels, precision = sample_probs(raw, splits.select, batch_size, workers, precision, "none")
    fitted = fit_temperature(probs, labels) if temperature is None else temperature
    if not fitted > 0:
        raise FerkitError(f"--temperature {temperature} is not positive; give a T > 0 or leave it out to fit one")
    before = compute_metrics(labels, temper(probs, loaded.temperature), loaded.classes)
    after = compute_metrics(labels, temper(probs, fitted), loaded.classes)
    counts = carried_counts(class_counts([s.label for s in splits.train], splits.classes), loaded.config.class_weights)
    split_name = splits.names.get("select", "select")
    if loaded.source.suffix.lower() == ".onnx":
        store_onnx_calibration(loaded.source, fitted, counts)
    else:
        selection = {"metrics": {k: after[k] for k in ("accuracy", "macro_f1")}, "select_split": split_name}
        store_calibration(loaded.source, fitted, counts, **({} if "metrics" in loaded.record else selection))
    return {
        "checkpoint": str(loaded.source),
        "split": split_name,
        "images": int(len(labels)),
        "precision": precision,
        "fitted": temperature is None,
        "temperature_before": loaded.temperature,
        "temperature": fitted,
        "class_counts": counts,
        "ece_before": before["ece"],
        "ece_after": after["ece"],
        "nll_before": before["loss"],
        "nll_after": after["loss"],
    }

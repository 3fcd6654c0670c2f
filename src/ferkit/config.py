"""The typed training configuration: the single source of defaults (the specification's values).

A config is built in layers: defaults (a resumed run's saved config, on ``--resume``), then a
preset, then a config file (TOML or JSON), then command-line flags. Each field carries its help,
its topic in ``ferkit train --help`` (``group``), whether a resumed run may change it
(``resumable``; :func:`resumed_config` rules on a resume) and the values it accepts (``choices``, or
``bounds``: an interval such as ``[0, 1)``), which every config meets however it was made. It is
stored in every checkpoint, so evaluation and prediction read the preprocessing a model was trained
with instead of guessing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from .architectures import SHAPES, min_image_size
from .errors import FerkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Choices and defaults of the commands that read a checkpoint, kept here, free of PyTorch, so that their --help
# answers at once; the modules that act on them read them from here.
DEVICES = ("auto", "cpu", "cuda")
PROTOCOLS = ("spec", "clean")
EVAL_PRECISIONS = ("fp32", "bf16")
BACKENDS = ("auto", "torch", "onnxruntime")
EVAL_TTA_MODES = ("none", "flip", "tencrop", "scales")
# Faces are often classified live, so tencrop's ten forward passes a face are left to evaluation.
PREDICT_TTA_MODES = ("none", "flip", "scales")
SPLITS = ("report", "select", "train")
# given: each image is the face, as FER2013's crops are; detected: each photo is read as `ferkit predict` reads it.
FACES = ("given", "detected")
EVAL_BATCH_SIZE = 256  # no gradients are kept, so a batch several times a training batch fits
PREDICT_BATCH_SIZE = 64
MARGIN = 0.1  # for detectors without landmarks (Haar), whose boxes are cut out as they are
CALIBRATION_IMAGES = 1024  # for int8 export
CROP_FORMATS = {"jpg": ".jpg", "png": ".png"}  # `ferkit data faces --format`


# The topics of ``ferkit train --help``, in order, each field's ``group``.
GROUPS = {
    "data": "what is trained and measured on",
    "augmentation": "input size, the training augmentation (specification section 1, in pipeline order) and "
    "normalisation",
    "model": "the network (specification section 2)",
    "optimisation": "loss and optimizer (specification section 3)",
    "schedule": "how long, and the learning rate over time",
    "speed": "how a run is computed, never what it computes (bf16 rounds, so precision aside)",
    "run": "the run folder, its records and what stops it",
}


def _opt(group: str, default: Any, help: str, resumable: bool = False, **kw: Any) -> Any:
    # resumable: a setting of speed or input/output, free to differ from the saved run's on --resume.
    return field(default=default, metadata={"group": group, "help": help, "resumable": resumable, **kw})


@dataclass
class Config:
    data: str | None = _opt(
        "data",
        None,
        "dataset: image-folder root or fer2013.csv (default: $FERKIT_DATA, then ./data/fer2013)",
        resumable=True,
    )
    protocol: str = _opt(
        "data",
        "spec",
        "spec: select and report on test/; clean: select on PublicTest, report PrivateTest",
        choices=PROTOCOLS,
    )
    report: bool = _opt(
        "data",
        True,
        "measure best.pth on the report split when training ends; --no-report leaves it unread (PrivateTest under "
        "the clean protocol), so runs are compared on the selection split before any is read on the report split",
        resumable=True,
    )
    limit_per_class: int = _opt(
        "data", 0, "use at most N images per class and split (0 = all; for smoke tests)", bounds="[0, inf)"
    )
    bad_images: str = _opt(
        "data",
        "stop",
        "an unreadable image stops the run, or is skipped and reported",
        resumable=True,
        choices=("stop", "skip"),
    )
    watch: tuple[str, ...] = _opt(
        "data",
        (),
        "folders of class folders (real photos such as webfaces-dev, or CK+48) measured every epoch as inference "
        "reads them, in metrics.csv beside the selection split; they never choose best.pth (none: off)",
        resumable=True,
        paths=True,
        metavar="DIR",
    )
    watch_min_support: int = _opt(
        "data",
        1,
        "a --watch folder's macro recall averages its classes with at least this many images",
        resumable=True,
        bounds="[1, inf)",
    )
    image_size: int = _opt("augmentation", 96, "network input size (square; at least the architecture's stride)")
    crop_scale: tuple[float, float] = _opt(
        "augmentation",
        (0.8, 1.0),
        "RandomResizedCrop area range, suited to aligned face crops",
        bounds="(0, 1]",
    )
    frame_scale: tuple[float, float] = _opt(
        "augmentation",
        (1.0, 1.0),
        "size of the face in the frame, drawn uniformly in MIN MAX before the crop: below 1 zooms out, the "
        "border filled by the image's edge pixels, as a detector's crop of a photo has surroundings there",
        bounds="[0.5, 2]",
    )
    frame_shift: float = _opt(
        "augmentation",
        0.0,
        "largest shift of the face, as a fraction of the side, drawn uniformly and apart in x and y, with "
        "--frame-scale in one affine op",
        bounds="[0, 0.5]",
    )
    flip_p: float = _opt("augmentation", 0.5, "RandomHorizontalFlip probability", bounds="[0, 1]")
    jitter_p: float = _opt("augmentation", 0.8, "probability of applying ColorJitter", bounds="[0, 1]")
    brightness: float = _opt("augmentation", 0.4, "ColorJitter brightness strength", bounds="[0, inf)")
    contrast: float = _opt("augmentation", 0.4, "ColorJitter contrast strength", bounds="[0, inf)")
    saturation: float = _opt("augmentation", 0.4, "ColorJitter saturation strength", bounds="[0, inf)")
    hue: float = _opt("augmentation", 0.1, "ColorJitter hue strength", bounds="[0, 0.5]")
    grayscale_p: float = _opt("augmentation", 0.2, "RandomGrayscale probability", bounds="[0, 1]")
    grey_input: bool = _opt(
        "augmentation",
        False,
        "read every image as grey, in training, evaluation and prediction",
    )
    equalize: bool = _opt(
        "augmentation",
        False,
        "histogram-equalize every image as it is read, in training, evaluation and prediction: faces then meet the "
        "network at one contrast, however the photo was exposed",
    )
    gamma: float = _opt(
        "augmentation",
        0.0,
        "gamma correction of every image, the gamma log-uniform in [exp(-G), exp(G)] (0: off)",
        bounds="[0, 2]",
    )
    rotation: float = _opt("augmentation", 20.0, "RandomRotation maximum degrees", bounds="[0, 180]")
    blur_p: float = _opt("augmentation", 0.0, "probability of a Gaussian blur", bounds="[0, 1]")
    blur_sigma: tuple[float, float] = _opt(
        "augmentation",
        (0.1, 1.0),
        "Gaussian blur sigma range in output pixels, drawn uniformly (kernel: 2*ceil(3*MAX)+1 pixels)",
        bounds="(0, 3]",
    )
    jpeg_p: float = _opt(
        "augmentation",
        0.0,
        "probability of a JPEG re-compression (after the blur, before the noise)",
        bounds="[0, 1]",
    )
    jpeg_quality: tuple[float, float] = _opt(
        "augmentation", (40.0, 95.0), "JPEG quality range, drawn uniformly as whole numbers", bounds="[1, 100]"
    )
    noise_p: float = _opt("augmentation", 0.0, "probability of additive Gaussian noise", bounds="[0, 1]")
    noise_std: float = _opt(
        "augmentation", 0.03, "standard deviation of the noise, on the 0-1 pixel scale (clipped after)", bounds="[0, 1]"
    )
    erasing_p: float = _opt("augmentation", 0.25, "RandomErasing probability", bounds="[0, 1]")
    mean: tuple[float, float, float] = _opt(
        "augmentation", IMAGENET_MEAN, "normalization mean (ImageNet)", bounds="[0, 1]"
    )
    std: tuple[float, float, float] = _opt(
        "augmentation", IMAGENET_STD, "normalization std (ImageNet)", bounds="(0, inf)"
    )
    arch: str = _opt(
        "model",
        "resnet18",
        "architecture: resnet18 (the specification's), resnet18s2 (stride-2 stem, a quarter of the FLOPs), or "
        "resnet34 / resnet34s2 (twice the depth: 3, 4, 6, 3 blocks a stage)",
        choices=tuple(SHAPES),
    )
    width: int = _opt(
        "model",
        64,
        "channels of the stem and layer1; each later stage doubles them (cost grows with its square)",
        bounds="[1, inf)",
    )
    dropout: float = _opt(
        "model", 0.3, "parameter_dropout: dropout probability in the classification head", bounds="[0, 1)"
    )
    hidden: int = _opt("model", 256, "hidden width of the classification head", bounds="[1, inf)")
    init_from: str | None = _opt(
        "model",
        None,
        "start from this trained network's weights (a checkpoint file, a run folder or a bundled model's name) to "
        "fine-tune it: the network and preprocessing follow it unless flags set them; its classifier is kept for the "
        "classes the data shares with it (None: random initialisation)",
        metavar="CKPT",
    )
    batch_size: int = _opt(
        "optimisation", 32, "images per optimizer step, over all processes of a multi-process run", bounds="[1, inf)"
    )
    optimizer: str = _opt(
        "optimisation",
        "adamw",
        "adamw (the specification's) or sgd (SGD with Nesterov momentum, --momentum)",
        choices=("adamw", "sgd"),
    )
    momentum: float = _opt("optimisation", 0.9, "SGD's Nesterov momentum (--optimizer sgd)", bounds="[0, 1)")
    lr: float = _opt(
        "optimisation",
        1e-3,
        "peak learning rate for a batch of 32 (scaled for other sizes by --lr-scaling)",
        bounds="(0, inf)",
    )
    lr_scaling: str = _opt(
        "optimisation", "sqrt", "rule that scales lr with batch_size/32", choices=("none", "sqrt", "linear")
    )
    weight_decay: float = _opt(
        "optimisation",
        0.05,
        "weight decay: decoupled for AdamW; for SGD added to the gradient (an L2 term: about 5e-4 suits it)",
        bounds="[0, inf)",
    )
    label_smoothing: float = _opt("optimisation", 0.1, "cross-entropy label smoothing", bounds="[0, 1)")
    class_weights: str = _opt(
        "optimisation",
        "none",
        "weigh each class in the loss: balanced, by the inverse of its training images, so that every class "
        "counts alike (FER2013 has 436 Disgust faces to 7,215 Happy; a dataset of your own may be more uneven); "
        "the model then carries an even class mix, as its file records for --prior",
        choices=("none", "balanced"),
    )
    mixup_alpha: float = _opt(
        "optimisation",
        0.0,
        "MixUp of whole batches, mixing weight ~ Beta(A, A); the loss takes the mixed labels (0: off)",
        bounds="[0, inf)",
    )
    cutmix_alpha: float = _opt(
        "optimisation",
        0.0,
        "CutMix of whole batches, pasted area ~ Beta(A, A); with --mixup-alpha, one of the two per batch (0: off)",
        bounds="[0, inf)",
    )
    sam_rho: float = _opt(
        "optimisation",
        0.0,
        "sharpness-aware minimization: each step takes the gradient at the weights moved a distance RHO up the "
        "batch's gradient, so two passes a batch, both counted in the PFLOP (about 0.05; 0: off)",
        bounds="[0, inf)",
    )
    ema_decay: float = _opt(
        "optimisation",
        0.0,
        "per-step decay of an exponential moving average of the weights, which evaluation uses (0: off)",
        bounds="[0, 1)",
    )
    distill_from: tuple[str, ...] = _opt(
        "optimisation",
        (),
        "teacher checkpoints (knowledge distillation): their probabilities for each training image (and its mirror, "
        "or see --distill-views), averaged and each at its calibrated temperature, computed once before the first "
        "epoch and kept in the run folder as teachers.pt, become part of that image's target (none: off)",
        paths=True,
        metavar="CKPT",
    )
    distill_weight: float = _opt(
        "optimisation",
        0.5,
        "share of the teachers' probabilities in each target with --distill-from; the label has the rest",
        bounds="[0, 1]",
    )
    distill_views: str = _opt(
        "optimisation",
        "flip",
        "what the teachers read of each training image with --distill-from, their probabilities averaged: flip, "
        "the image and its mirror; scales, the image framed 0.85, 1 and 1.15 times as wide (as --tta scales)",
        choices=("flip", "scales"),
    )
    distill_temperature: float = _opt(
        "optimisation",
        1.0,
        "softens the teachers' probabilities with --distill-from: their calibrated logits are divided by it before "
        "the softmax, so the targets say more about the classes a face resembles besides its top one (1: as "
        "calibrated)",
        bounds="(0, inf)",
    )
    sync_bn: bool = _opt(
        "optimisation", False, "with several processes, BatchNorm statistics over the global batch (SyncBatchNorm)"
    )
    epochs: int = _opt(
        "schedule",
        100,
        "training epochs (the cosine schedule spans all of them; --resume may raise it)",
        bounds="[1, inf)",
    )
    min_lr: float = _opt("schedule", 1e-6, "learning rate the cosine schedule decays to", bounds="[0, inf)")
    schedule_unit: str = _opt(
        "schedule",
        "epoch",
        "step the cosine schedule once per epoch (the spec) or once per batch",
        choices=("epoch", "step"),
    )
    warmup_epochs: float = _opt(
        "schedule",
        0.0,
        "epochs of linear learning-rate warmup from lr/25 before the cosine decay",
        bounds="[0, inf)",
    )
    device: str = _opt("speed", "auto", "auto picks cuda when present", resumable=True, choices=DEVICES)
    precision: str = _opt(
        "speed",
        "auto",
        "training precision; auto: bf16 where the hardware has native bf16",
        resumable=True,
        choices=("auto", "fp32", "bf16"),
    )
    eval_precision: str = _opt(
        "speed",
        "fp32",
        "precision of every evaluation (selection, report)",
        resumable=True,
        choices=EVAL_PRECISIONS,
    )
    data_pipeline: str = _opt(
        "speed",
        "auto",
        "workers: per-image DataLoader workers; batched: decode once, augment batches on the device",
        resumable=True,
        choices=("auto", "workers", "batched"),
    )
    workers: int = _opt(
        "speed",
        4,
        "DataLoader worker processes per loader (at most the cores this process may use)",
        resumable=True,
        bounds="[0, inf)",
    )
    cache_dir: str | None = _opt(
        "speed",
        None,
        "folder of the batched pipeline's decoded-image cache (None: $FERKIT_CACHE, else ~/.cache/ferkit)",
        resumable=True,
    )
    channels_last: str = _opt(
        "speed",
        "auto",
        "channels-last memory layout for the model and its inputs",
        resumable=True,
        choices=("auto", "on", "off"),
    )
    compile: bool = _opt(
        "speed",
        False,
        "torch.compile the model",
        resumable=True,
    )
    eval_batch_factor: int = _opt(
        "speed",
        2,
        "evaluation batch size as a multiple of the training batch (no gradients are kept, so more images fit)",
        resumable=True,
        bounds="[1, inf)",
    )
    label_cache: str = _opt(
        "speed",
        "auto",
        "where the teachers' probabilities (--distill-from) are kept for the next run whose teachers read the same "
        "training images (same files, views and temperature), which then skips the labelling: auto, "
        "$XDG_CACHE_HOME/ferkit/labels (else ~/.cache/ferkit/labels); off; or a folder",
        resumable=True,
    )
    out: str = _opt("run", "runs/ferkit", "run folder: config, logs, checkpoints, plots")
    seed: int = _opt("run", 0, "random seed (data order, augmentation, initialisation)", bounds="[0, inf)")
    tensorboard: bool = _opt("run", True, "also log per-epoch metrics to TensorBoard", resumable=True)
    log_interval: int = _opt(
        "run",
        20,
        "steps between progress-bar updates and checks of the loss for NaN/inf",
        resumable=True,
        bounds="[1, inf)",
    )
    nonfinite: str = _opt(
        "run",
        "stop",
        "a NaN/inf loss stops the run, or its step is skipped and counted",
        resumable=True,
        choices=("stop", "skip"),
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f, getattr(self, f.name))
        smallest = min_image_size(self.arch)
        if self.image_size < smallest:
            raise FerkitError(
                f"--image-size must be >= {smallest} for --arch {self.arch}, which downsamples by {smallest} "
                f"(got {self.image_size})"
            )
        for name in ("crop_scale", "frame_scale", "blur_sigma", "jpeg_quality"):
            low, high = getattr(self, name)
            if low > high:
                raise FerkitError(f"{_flag(name)} must be MIN MAX with MIN <= MAX (got {_value((low, high))})")
        # The blur kernel reaches 3 sigma to each side, and reflect padding needs the image to be wider than that.
        if self.blur_p and math.ceil(3 * self.blur_sigma[1]) >= self.image_size:
            raise FerkitError(
                f"--blur-sigma up to {self.blur_sigma[1]} needs --image-size above {math.ceil(3 * self.blur_sigma[1])} "
                f"(got {self.image_size}); lower the sigma or raise the size"
            )

    def effective_lr(self) -> float:
        ratio = self.batch_size / 32
        return self.lr * {"none": 1.0, "sqrt": math.sqrt(ratio), "linear": ratio}[self.lr_scaling]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        return cls().updated(values)

    def updated(self, values: dict[str, Any]) -> Config:
        known = {f.name: f for f in fields(self)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise FerkitError(f"unknown config keys {unknown}; valid keys: {sorted(known)}")
        coerced = {k: _coerce(known[k], v) for k, v in values.items()}
        return dataclasses.replace(self, **coerced)


# Recipes for machines without a GPU, chosen on PublicTest by training compute (BENCHMARKS.md has the ablations).
# Everything not listed keeps the specification's value. Both train at FER2013's native 48x48 (upsampling to 96
# buys no accuracy for 4x the FLOPs) with the stride-2 stem, batch 64, a 2e-3 peak reached by linear warmup and
# a per-step cosine, on the decode-once batched pipeline (no DataLoader processes competing for the cores).
_CPU_RECIPE: dict[str, Any] = {
    "arch": "resnet18s2",
    "image_size": 48,
    "batch_size": 64,
    "lr": 2e-3,
    "lr_scaling": "none",
    "schedule_unit": "step",
    "protocol": "clean",
    "data_pipeline": "batched",
    "grey_input": True,
}
# Taught by the bundled model: SGD with Nesterov momentum (students taught with it read real photos better than
# AdamW's), no label smoothing (the teacher's soft targets already keep the label below 1; both together leave the
# student under-confident), half of each target the teacher's probabilities for the image and its mirror.
_TAUGHT: dict[str, Any] = {
    "optimizer": "sgd",
    "lr": 0.05,
    "weight_decay": 5e-4,
    "label_smoothing": 0.0,
    "distill_from": ("fer2013_resnet18",),
}
PRESETS: dict[str, dict[str, Any]] = {
    "spec": {},
    # 0.496 PFLOP: a network of width 24 (0.265 GFLOP a training image) for 60 epochs, 0.455 PFLOP, and the bundled
    # model's two networks labelling the training images and their mirrors once, 0.040. Narrower and longer beat
    # width 32 for 36 epochs at the same compute.
    "quick": {**_CPU_RECIPE, "width": 24, "epochs": 60, "warmup_epochs": 2, **_TAUGHT},
    # The bundled model's recipe: 1.94 PFLOP, width 48 (1.06 GFLOP a training image), 64 epochs, weight EMA.
    "bundled": {**_CPU_RECIPE, "width": 48, "epochs": 64, "warmup_epochs": 3, "ema_decay": 0.999},
}
# Faces as a face detector crops them from photos: framed 15% tighter or looser and a little off-centre, softer,
# noisier and exposed otherwise than FER2013's crops. Starting values, not yet chosen by ablation; no JPEG
# (`--jpeg-p`: level on PublicTest and lower on real photos over two quick seeds, BENCHMARKS.md), and no
# MixUp/CutMix, which cost accuracy in runs as short as these.
_PHOTOS: dict[str, Any] = {
    "frame_scale": (0.85, 1.15),
    "frame_shift": 0.05,
    "gamma": 0.25,
    "blur_p": 0.2,
    "blur_sigma": (0.1, 1.0),
    "noise_p": 0.2,
    "noise_std": 0.03,
}
PRESETS.update({f"{name}-photos": {**PRESETS[name], **_PHOTOS} for name in ("quick", "bundled")})


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    if f.metadata.get("paths"):
        return (value,) if isinstance(value, str) else tuple(value)
    if isinstance(f.default, tuple):
        value = tuple(float(v) for v in value)
        if len(value) != len(f.default):
            raise FerkitError(f"config key {f.name!r} needs {len(f.default)} numbers, got {len(value)}")
    return value


def _check(f: dataclasses.Field, value: Any) -> None:
    """One line naming the flag, what it accepts and the value, for a value of the wrong type or out of range."""
    flag = _flag(f.name)
    choices, bounds = f.metadata.get("choices"), f.metadata.get("bounds")
    if choices:
        if value not in choices:
            raise FerkitError(f"{flag} must be one of {', '.join(choices)} (got {value!r})")
        return
    kind = str if f.metadata.get("paths") else type(f.default[0]) if isinstance(f.default, tuple) else type(f.default)
    values = value if isinstance(f.default, tuple) and isinstance(value, (tuple, list)) else (value,)
    accepted, words = _TYPES[kind]
    for v in values:
        if v is None and f.default is None:
            continue
        # bool is an int to Python, but --epochs true is no number of epochs.
        if not isinstance(v, accepted) or (kind is not bool and isinstance(v, bool)):
            raise FerkitError(f"{flag} must be {words} (got {v!r})")
        if bounds and not _within(v, bounds):
            raise FerkitError(f"{flag} must be {_range_text(bounds)} (got {_value(value)})")


# What a field of each default's type accepts, and the words for it.
_TYPES: dict[type, tuple[tuple[type, ...], str]] = {
    bool: ((bool,), "true or false"),
    int: ((int,), "a whole number"),
    float: ((int, float), "a number"),
    str: ((str,), "a string"),
    type(None): ((str,), "a string"),
}


def _within(value: float, bounds: str) -> bool:
    low, high = (float(end) for end in bounds[1:-1].split(","))
    above = value > low if bounds[0] == "(" else value >= low
    below = value < high if bounds[-1] == ")" else value <= high
    return above and below  # NaN is neither


def _range_text(bounds: str) -> str:
    low, high = (end.strip() for end in bounds[1:-1].split(","))
    if high == "inf":
        return f"{'>' if bounds[0] == '(' else '>='} {low}"
    return f"in {bounds}"


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FerkitError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise FerkitError(
            f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}"
        ) from None


def add_config_arguments(parser: argparse.ArgumentParser) -> dict[str, argparse._ArgumentGroup]:
    """One flag per config field, under its group's heading; returns the groups, for the command's own flags.

    Only flags actually given override lower layers.
    """
    groups = {name: parser.add_argument_group(name, description) for name, description in GROUPS.items()}
    groups["run"].add_argument("--preset", choices=sorted(PRESETS), default="spec", help="base set of values")
    groups["run"].add_argument("--config", help="TOML or JSON file of config values")
    for f in fields(Config):
        notes = [] if f.default is None else [f"default: {f.default}"]  # what None means, the help says
        if f.metadata["resumable"]:
            notes.append("--resume may change it")
        kw: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f.metadata["help"] + (f" ({'; '.join(notes)})" if notes else ""),
        }
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif f.metadata.get("paths"):
            # No value given turns it off: a resumed run can stop watching, or a config file's teacher be dropped.
            kw.update(nargs="*", type=str, metavar=f.metadata["metavar"])
        elif isinstance(f.default, tuple):
            kw.update(nargs=len(f.default), type=float, metavar="X")
        else:
            kw["type"] = type(f.default) if f.default is not None else str
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
            if "metavar" in f.metadata:
                kw["metavar"] = f.metadata["metavar"]
        groups[f.metadata["group"]].add_argument(_flag(f.name), **kw)
    return groups


def config_from_args(args: argparse.Namespace, base: Config | None = None) -> Config:
    """``base`` (the defaults, or a resumed run's config) under the preset, config file and flags given."""
    names = {f.name for f in fields(Config)}
    cfg = (base or Config()).updated(PRESETS[args.preset])
    if args.config:
        cfg = cfg.updated(load_config_file(args.config))
    return cfg.updated({k: v for k, v in vars(args).items() if k in names})


def resumed_config(saved: Config, asked: Config, min_epochs: int, run: str) -> tuple[Config, list[str]]:
    """The config a resumed run continues with, and its changes from the saved one (``--flag value (was value)``).

    ``asked`` may differ from ``saved`` in resumable fields (speed, input/output), and in ``epochs`` down to
    ``min_epochs``, the epoch the run is in; any other difference would train the rest of the run on another recipe
    than its start, and is refused in one line naming the flags.
    """
    # ``out`` is the folder resumed, wherever it is now; the saved one may be where the run was started.
    changed = [f for f in fields(Config) if f.name != "out" and getattr(asked, f.name) != getattr(saved, f.name)]
    refused = [f for f in changed if not f.metadata["resumable"] and f.name != "epochs"]
    if refused:
        flags = " ".join(flag_of(f.name, getattr(asked, f.name)) for f in refused)
        values = ", ".join(f"{f.name} {_value(getattr(saved, f.name))}" for f in refused)
        raise FerkitError(
            f"cannot resume {run} with {flags}: the run was trained with {values}; start a new run "
            f"(another --out) to change {'it' if len(refused) == 1 else 'them'}"
        )
    if asked.epochs < min_epochs:
        raise FerkitError(
            f"cannot resume {run} with --epochs {asked.epochs}: the run is at epoch {min_epochs} "
            f"already; give at least --epochs {min_epochs}"
        )
    return asked, [f"{flag_of(f.name, getattr(asked, f.name))} (was {_value(getattr(saved, f.name))})" for f in changed]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def flag_of(name: str, value: Any) -> str:
    """The flag that sets ``name`` to ``value``."""
    if isinstance(value, bool):
        return _flag(name) if value else "--no-" + _flag(name)[2:]
    return f"{_flag(name)} {_value(value)}"


def _value(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)

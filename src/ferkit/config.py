"""The typed training configuration: the single source of defaults (the specification's values).

A config is built in layers: defaults, then a preset, then a config file (TOML or JSON), then
command-line flags. It is stored in every checkpoint, so evaluation and prediction read the
preprocessing a model was trained with instead of guessing it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import FerkitError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _opt(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # Data
    data: str | None = _opt(None, "dataset: image-folder root or fer2013.csv (default: $FERKIT_DATA, then ./data/fer2013)")
    protocol: str = _opt("spec", "spec: select and report on test/; clean: select on PublicTest, report PrivateTest",
                         choices=("spec", "clean"))
    limit_per_class: int = _opt(0, "use at most N images per class and split (0 = all; for smoke tests)")
    workers: int = _opt(4, "DataLoader worker processes")
    bad_images: str = _opt("stop", "an unreadable image stops the run, or is skipped and reported",
                           choices=("stop", "skip"))
    nonfinite: str = _opt("stop", "a NaN/inf loss stops the run (checked every 20 steps), or its step is skipped and "
                          "counted (checked every step: one host-device synchronisation per step on a GPU)",
                          choices=("stop", "skip"))
    data_pipeline: str = _opt("auto", "workers: DataLoader workers decode and augment image by image every epoch; "
                              "batched: decode once (cached), augment whole batches on the training device; "
                              "auto: batched on CUDA, workers on CPU", choices=("auto", "workers", "batched"))
    cache_dir: str | None = _opt(None, "folder of the batched pipeline's decoded-image cache "
                                 "(None: $FERKIT_CACHE, else ~/.cache/ferkit)")
    # Input and augmentation (specification section 1, in pipeline order)
    image_size: int = _opt(96, "network input size (square)")
    crop_scale: tuple[float, float] = _opt((0.8, 1.0), "RandomResizedCrop area range, suited to aligned face crops")
    flip_p: float = _opt(0.5, "RandomHorizontalFlip probability")
    jitter_p: float = _opt(0.8, "probability of applying ColorJitter")
    brightness: float = _opt(0.4, "ColorJitter brightness strength")
    contrast: float = _opt(0.4, "ColorJitter contrast strength")
    saturation: float = _opt(0.4, "ColorJitter saturation strength")
    hue: float = _opt(0.1, "ColorJitter hue strength")
    grayscale_p: float = _opt(0.2, "RandomGrayscale probability")
    rotation: float = _opt(20.0, "RandomRotation maximum degrees")
    erasing_p: float = _opt(0.25, "RandomErasing probability")
    mean: tuple[float, float, float] = _opt(IMAGENET_MEAN, "normalization mean (ImageNet)")
    std: tuple[float, float, float] = _opt(IMAGENET_STD, "normalization std (ImageNet)")
    # Model (specification section 2)
    arch: str = _opt("resnet18", "architecture: resnet18 (the specification's, stem at stride 1) or resnet18s2 "
                     "(stem at stride 2: a quarter of the FLOPs)", choices=("resnet18", "resnet18s2"))
    width: int = _opt(64, "channels of the stem and layer1; each later stage doubles them (cost grows with its square)")
    dropout: float = _opt(0.3, "parameter_dropout: dropout probability in the classification head")
    hidden: int = _opt(256, "hidden width of the classification head")
    # Optimisation (specification section 3)
    epochs: int = _opt(100, "training epochs (the cosine schedule spans all of them)")
    batch_size: int = _opt(32, "images per optimizer step, over all processes of a multi-process run")
    lr: float = _opt(1e-3, "AdamW learning rate for a batch of 32 (scaled for other sizes by --lr-scaling)")
    lr_scaling: str = _opt("sqrt", "rule that scales lr with batch_size/32", choices=("none", "sqrt", "linear"))
    weight_decay: float = _opt(0.05, "AdamW decoupled weight decay")
    min_lr: float = _opt(1e-6, "learning rate the cosine schedule decays to")
    schedule_unit: str = _opt("epoch", "step the cosine schedule once per epoch (the spec) or once per batch",
                              choices=("epoch", "step"))
    warmup_epochs: float = _opt(0.0, "linear learning-rate warmup from lr/25 before the cosine decay, in epochs "
                                "(fractions count with --schedule-unit step)")
    label_smoothing: float = _opt(0.1, "cross-entropy label smoothing")
    ema_decay: float = _opt(0.0, "keep an exponential moving average of the weights (decay per optimizer step, e.g. "
                            "0.999); evaluation, best.pth and the report use it. 0: off")
    # Run
    out: str = _opt("runs/ferkit", "run folder: config, logs, checkpoints, plots")
    seed: int = _opt(0, "random seed (data order, augmentation, initialisation)")
    device: str = _opt("auto", "auto picks cuda when present", choices=("auto", "cpu", "cuda"))
    precision: str = _opt("auto", "training precision; auto: bf16 autocast where the hardware has native bf16, "
                          "else fp32", choices=("auto", "fp32", "bf16"))
    eval_precision: str = _opt("fp32", "precision of every evaluation (selection, report): fp32 gives the same "
                               "figures on every machine", choices=("fp32", "bf16"))
    tensorboard: bool = _opt(True, "also log per-epoch metrics to TensorBoard")
    sync_bn: bool = _opt(False, "with several processes, BatchNorm statistics over the global batch (SyncBatchNorm)")
    channels_last: str = _opt("auto", "channels-last memory layout for the model and its inputs; auto: on for CUDA "
                              "and for bf16 on CPUs with native bf16 (measured faster there, slower in fp32 on "
                              "AVX2)", choices=("auto", "on", "off"))
    compile: bool = _opt(False, "torch.compile the model: a minute or more of compiling at start, to be repaid by "
                         "faster steps on long GPU runs (measured slower on CPUs)")

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
_CPU_RECIPE: dict[str, Any] = {"arch": "resnet18s2", "image_size": 48, "batch_size": 64, "lr": 2e-3,
                               "lr_scaling": "none", "schedule_unit": "step", "protocol": "clean",
                               "data_pipeline": "batched"}
PRESETS: dict[str, dict[str, Any]] = {
    "spec": {},
    # 0.485 PFLOP: half-width network (0.47 GFLOP a training image), 36 epochs.
    "quick": {**_CPU_RECIPE, "width": 32, "epochs": 36, "warmup_epochs": 2},
    # The bundled model's recipe: 1.94 PFLOP, width 48 (1.06 GFLOP a training image), 64 epochs, weight EMA.
    "bundled": {**_CPU_RECIPE, "width": 48, "epochs": 64, "warmup_epochs": 3, "ema_decay": 0.999},
}


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    if isinstance(f.default, tuple):
        value = tuple(float(v) for v in value)
        if len(value) != len(f.default):
            raise FerkitError(f"config key {f.name!r} needs {len(f.default)} numbers, got {len(value)}")
        return value
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise FerkitError(f"config key {f.name!r} must be one of {list(choices)}, got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise FerkitError(f"cannot read config file {path}: {e.strerror}") from None
    try:
        return tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise FerkitError(f"config file {path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {e}") from None


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; only flags actually given override lower layers."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="spec", help="base set of values")
    parser.add_argument("--config", help="TOML or JSON file of config values")
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": f"{f.metadata['help']} (default: {f.default})"}
        if isinstance(f.default, bool):
            kw["action"] = argparse.BooleanOptionalAction
        elif isinstance(f.default, tuple):
            kw.update(nargs=len(f.default), type=float, metavar="X")
        else:
            kw["type"] = type(f.default) if f.default is not None else str
            if "choices" in f.metadata:
                kw["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kw)


def config_from_args(args: argparse.Namespace) -> Config:
    names = {f.name for f in fields(Config)}
    cfg = Config().updated(PRESETS[args.preset])
    if args.config:
        cfg = cfg.updated(load_config_file(args.config))
    return cfg.updated({k: v for k, v in vars(args).items() if k in names})



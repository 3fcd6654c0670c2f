"""The recipe's train and test pipelines (docs/recipe.md, section 1), built with torchvision v2.

Both start by converting to a 3-channel uint8 tensor, so grayscale FER2013 crops and colour
photos go through the same ops; the geometric and colour ops run on uint8 (cheaper than float).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from ..config import Config
from .images import to_rgb


class ToRGB:
    """The pipelines' first step: :func:`ferkit.images.to_rgb`, as a transform that names itself in a pipeline.

    With ``grey``, the image becomes grey in 3 equal channels: a network that only ever saw grey faces (FER2013)
    reads colour as noise. PIL's integer luma leaves an image that is grey already exactly as it was.
    """

    def __init__(self, grey: bool = False) -> None:
        self.grey = grey

    def __call__(self, image: Image.Image | np.ndarray) -> Image.Image:
        rgb = to_rgb(image)
        return rgb.convert("L").convert("RGB") if self.grey else rgb

    def __repr__(self) -> str:
        return f"ToRGB(grey={self.grey})"


def _to_rgb_tensor(cfg: Config) -> list:
    return [ToRGB(cfg.grey_input), v2.ToImage()]


def _normalize(cfg: Config) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]


def build_train_transform(cfg: Config) -> v2.Compose:
    return v2.Compose(
        _to_rgb_tensor(cfg)
        + [
            v2.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale), antialias=True),
            v2.RandomHorizontalFlip(p=cfg.flip_p),
            v2.RandomApply(
                [
                    v2.ColorJitter(
                        brightness=cfg.brightness, contrast=cfg.contrast, saturation=cfg.saturation, hue=cfg.hue
                    )
                ],
                p=cfg.jitter_p,
            ),
            v2.RandomGrayscale(p=cfg.grayscale_p),
            v2.RandomRotation(degrees=cfg.rotation),
        ]
        + _normalize(cfg)
        + [v2.RandomErasing(p=cfg.erasing_p)]
    )


def build_test_transform(cfg: Config) -> v2.Compose:
    return v2.Compose(
        _to_rgb_tensor(cfg) + [v2.Resize((cfg.image_size, cfg.image_size), antialias=True)] + _normalize(cfg)
    )


def preprocessing(cfg: Config) -> dict:
    """The test transform's values for readers other than ferkit: runtimes fed an exported ONNX file, and the
    server's page, which sizes webcam snapshots by them."""
    return {"image_size": cfg.image_size, "mean": list(cfg.mean), "std": list(cfg.std), "grey": cfg.grey_input}

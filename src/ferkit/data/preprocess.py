"""The test pipeline (docs/recipe.md, section 1): what every reading of a face goes through, in evaluation, prediction,
the server and export's calibration.

Written with torch alone, so reading a photo does not import torchvision (about 1.4 s of ``ferkit predict``'s
start-up, most of it torchvision's own imports); it gives what torchvision's ``Compose([ToImage(), Resize(size,
antialias=True), ToDtype(float32, scale=True), Normalize(mean, std)])`` gives, pixel for pixel (tested).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

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


def resize(x: Tensor, size: int) -> Tensor:
    """An image [C, H, W] or batch [B, C, H, W], uint8 or float, resized bilinearly to size x size, antialiased
    (as torchvision's ``Resize(antialias=True)``, which calls the same kernel: uint8 stays uint8 on the CPU)."""
    if x.shape[-2:] == (size, size):
        return x
    batch = x if x.ndim == 4 else x.unsqueeze(0)
    out = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out if x.ndim == 4 else out.squeeze(0)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalization of uint8 images (torchvision's; imported here because only ``--equalize`` needs it)."""
    from torchvision.transforms.v2.functional import equalize as tv_equalize

    return tv_equalize(x)


class Preprocess:
    """A PIL image or an array to the network's input: 3-channel RGB (grey in 3 channels with ``grey_input``),
    equalized with ``equalize``, resized to ``image_size`` and normalised: float [3, S, S]."""

    def __init__(self, cfg: Config) -> None:
        self.to_rgb = ToRGB(cfg.grey_input)
        self.size, self.equalize = cfg.image_size, cfg.equalize
        self.mean = torch.tensor(cfg.mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(cfg.std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image | np.ndarray) -> Tensor:
        x = torch.from_numpy(np.array(self.to_rgb(image), dtype=np.uint8)).permute(2, 0, 1)
        if self.equalize:
            x = equalize(x)
        x = resize(x, self.size).to(torch.float32).mul_(1 / 255)
        return x.sub_(self.mean).div_(self.std)

    def __repr__(self) -> str:
        return f"Preprocess({self.to_rgb}, size={self.size}, equalize={self.equalize})"


def build_test_transform(cfg: Config) -> Preprocess:
    return Preprocess(cfg)


def preprocessing(cfg: Config) -> dict:
    """The test transform's values for readers other than ferkit: runtimes fed an exported ONNX file, and the
    server's page, which sizes webcam snapshots by them."""
    return {
        "image_size": cfg.image_size,
        "mean": list(cfg.mean),
        "std": list(cfg.std),
        "grey": cfg.grey_input,
        "equalize": cfg.equalize,
    }

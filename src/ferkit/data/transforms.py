"""The recipe's train pipeline (docs/recipe.md, section 1), built with torchvision v2; the test pipeline is
:mod:`ferkit.data.preprocess`.

It starts by converting to a 3-channel uint8 tensor, so grayscale FER2013 crops and colour
photos go through the same ops; the geometric and colour ops run on uint8 (cheaper than float).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..config import Config
from .preprocess import ToRGB


class RandomReframe:
    """The face framed at a random scale and offset, as a face detector's box around it in a photo would frame it.

    One box, of 1/scale the image's side, its centre moved by up to ``shift`` of the side in x and y, read from
    the image with its edge pixels repeated beyond the border and resized back to the image's size: the black a
    zero fill would put there is nowhere in a detector's crop of a real photo, whose surroundings continue.
    """

    def __init__(self, scale: tuple[float, float], shift: float) -> None:
        self.scale, self.shift = scale, shift

    def __call__(self, image: Tensor) -> Tensor:
        height, width = image.shape[-2:]
        scale = self.scale[0] + (self.scale[1] - self.scale[0]) * torch.rand(()).item()
        dx, dy = ((torch.rand(2) * 2 - 1) * self.shift).tolist()
        box_h, box_w = round(height / scale), round(width / scale)
        top, left = round((height - box_h) / 2 + dy * height), round((width - box_w) / 2 + dx * width)
        pad = max(0, -top, -left, top + box_h - height, left + box_w - width)
        padded = TF.pad(image, [pad], padding_mode="edge") if pad else image
        return TF.resized_crop(padded, top + pad, left + pad, box_h, box_w, [height, width], antialias=True)

    def __repr__(self) -> str:
        return f"RandomReframe(scale={self.scale}, shift={self.shift})"


class RandomGamma:
    """Gamma correction with the gamma log-uniform in [exp(-strength), exp(strength)]: as likely to darken the
    mid-tones as to lighten them, by the same ratios, as exposure and camera curves vary."""

    def __init__(self, strength: float) -> None:
        self.strength = strength

    def __call__(self, image: Tensor) -> Tensor:
        return TF.adjust_gamma(image, math.exp((torch.rand(()).item() * 2 - 1) * self.strength))

    def __repr__(self) -> str:
        return f"RandomGamma(strength={self.strength})"


class SensorNoise:
    """Gaussian noise of std ``sigma`` on a float image in [0, 1], clipped back to it.

    With ``grey`` one draw is shared by the three channels, so a grey image stays grey, as the grey inputs the
    model is trained for and meets are; otherwise each channel draws its own, as a colour sensor's do.
    """

    def __init__(self, sigma: float, grey: bool = False) -> None:
        self.sigma, self.grey = sigma, grey

    def __call__(self, image: Tensor) -> Tensor:
        shape = (1, *image.shape[-2:]) if self.grey else image.shape
        return (image + torch.randn(shape) * self.sigma).clamp_(0, 1)

    def __repr__(self) -> str:
        return f"SensorNoise(sigma={self.sigma}, grey={self.grey})"


class RandomJPEG:
    """A JPEG round trip of a uint8 image [C, H, W] at a whole quality drawn uniformly from ``quality`` (both ends
    included), as web photos have been through."""

    def __init__(self, quality: tuple[float, float]) -> None:
        self.quality = (int(quality[0]), int(quality[1]))

    def __call__(self, image: Tensor) -> Tensor:
        return jpeg(image, int(torch.randint(self.quality[0], self.quality[1] + 1, ())))

    def __repr__(self) -> str:
        return f"RandomJPEG(quality={self.quality})"


def jpeg(image: Tensor, quality: int) -> Tensor:
    """uint8 [C, H, W] (C 1 or 3) through Pillow's JPEG codec and back; torchvision's own is deprecated from 0.29."""
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).squeeze(-1).numpy()).save(buffer, "JPEG", quality=quality)
    decoded = torch.from_numpy(np.asarray(Image.open(buffer, formats=["JPEG"])).copy())
    return decoded.view(*image.shape[1:], -1).permute(2, 0, 1)


def blur_kernel_size(sigma_max: float) -> int:
    """Odd and 3 sigmas either side of the centre, where the Gaussian has fallen to 1%."""
    return 2 * math.ceil(3 * sigma_max) + 1


def reframes(cfg: Config) -> bool:
    return tuple(cfg.frame_scale) != (1.0, 1.0) or cfg.frame_shift > 0


def _to_rgb_tensor(cfg: Config) -> list:
    # TF.equalize itself, not RandomEqualize(p=1), which would take a draw from the generator.
    return [ToRGB(cfg.grey_input), v2.ToImage()] + ([v2.Lambda(TF.equalize)] if cfg.equalize else [])


def _normalize(cfg: Config) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(cfg.mean), std=list(cfg.std))]


def build_train_transform(cfg: Config) -> v2.Compose:
    """The recipe's chain; an op whose Config field is at its default (off) is left out, so the chain is the
    specification's exactly, random draws included."""
    framing = [RandomReframe(tuple(cfg.frame_scale), cfg.frame_shift)] if reframes(cfg) else []
    gamma = [RandomGamma(cfg.gamma)] if cfg.gamma > 0 else []
    blur = tuple(cfg.blur_sigma)
    degrade = _sometimes(cfg.blur_p, v2.GaussianBlur(blur_kernel_size(blur[1]), sigma=blur)) + _sometimes(
        cfg.jpeg_p, RandomJPEG(cfg.jpeg_quality)
    )
    # GaussianNoise takes float images; the ops before it stay on uint8, which is cheaper.
    noise = _sometimes(cfg.noise_p, SensorNoise(cfg.noise_std, cfg.grey_input))
    to_float, normalize = _normalize(cfg)
    return v2.Compose(
        _to_rgb_tensor(cfg)
        + framing
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
        ]
        + gamma
        + [v2.RandomRotation(degrees=cfg.rotation)]
        + degrade
        + [to_float]
        + noise
        + [normalize, v2.RandomErasing(p=cfg.erasing_p)]
    )


def _sometimes(p: float, op: v2.Transform) -> list[v2.Transform]:
    return [v2.RandomApply([op], p=p)] if p > 0 else []


def build_batch_mix(cfg: Config, num_classes: int) -> v2.Transform | None:
    """MixUp and/or CutMix of a normalised batch: ``mix(images, labels)`` gives mixed images and label
    probabilities [B, num_classes], which cross-entropy takes as they are. None when both are off."""
    mixes = [
        op(alpha=alpha, num_classes=num_classes)
        for op, alpha in ((v2.MixUp, cfg.mixup_alpha), (v2.CutMix, cfg.cutmix_alpha))
        if alpha > 0
    ]
    if not mixes:
        return None
    return mixes[0] if len(mixes) == 1 else v2.RandomChoice(mixes)

"""Fast input pipeline: decode the dataset once, then augment whole batches on the training device.

The reference pipelines (:mod:`ferkit.transforms`) decode every image and run the specification's
augmentations image by image in DataLoader workers, every epoch. Here:

- :func:`decode_once` decodes every sample once into one uint8 tensor ``[N, C, H, W]`` and caches
  it on disk (``$FERKIT_CACHE``, default ``~/.cache/ferkit``), so later runs load it in a second.
  Memory is ``N*C*H*W`` bytes: FER2013's 28,709 training faces at 48x48 are 66 MB.
- :class:`BatchAugment` applies the recipe's training ops (docs/recipe.md, section 1) to a uint8
  batch with per-sample random parameters, on whatever device the batch is on: the CPU between
  steps, or the GPU when the CPU cannot feed it. No per-sample Python, no host-device
  synchronisation, so it can run ahead of the GPU like any other kernel.
- :func:`batches` yields uint8 batches of the decoded tensor in a sampler's order.

Equivalence with the torchvision reference (``build_train_transform``), which the tests check
statistically:

- Same ops, probabilities and parameter distributions: crop boxes are drawn with torchvision's
  own rule (10 integer attempts, then a centre crop); ColorJitter's four ops run in a random order
  drawn per sample, as torchvision draws one per image; erasing boxes likewise.
- Colour ops (jitter, grayscale) are pointwise, so they run on the small source image before the
  geometric warp instead of after the crop: the same result up to interpolation, at a quarter of
  the pixels for 48->96. Contrast blends towards the mean grey of the crop box, as torchvision does
  on the crop. The rotation's black fill is added by the warp, after the colour ops, as in the
  reference.
- Crop-resize, flip and rotation are one composed affine warp (one bilinear ``grid_sample``, zero
  padding) instead of a bilinear resize followed by a nearest-neighbour rotation: slightly
  smoother, and no double resampling.
- Values stay in float between ops; the reference works in uint8 and truncates after each colour
  op (a bias of up to ~1/255 per op that this pipeline does not reproduce).
- Sources larger than the output are first downscaled with antialiasing to the output size (the
  warp alone would alias); the crop box is drawn in the original pixels either way.
- The photo ops (off by default, and then drawing nothing, so the default draws are unchanged):
  reframing is folded into the same warp (the reference resamples the reframed image once more
  before its crop, a little softer), and contrast then averages the crop box's part inside the
  source, without the repeated edge pixels the reference also sees; gamma runs with the colour
  ops; blur (torchvision's kernel and reflect padding, one sigma per sample) and noise (each
  channel apart, as torchvision's) run on the output before the normalisation, as in the
  reference. JPEG re-compression runs between them, as in the reference and with its codec (Pillow's), one
  image at a time on the host: with ``jpeg_p`` above 0 a GPU batch waits for the host once a step, the only op
  that makes it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from ..atomic import write_atomically
from ..config import Config
from ..errors import FerkitError
from .datasets import Sample, load_image
from .images import to_rgb
from .preprocess import resize
from .transforms import blur_kernel_size, jpeg, reframes

log = logging.getLogger("ferkit")

CACHE_VERSION = 2  # 2: images turned upright by their EXIF orientation, as every reader now decodes them
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale
ERASE_SCALE = (0.02, 0.33)  # torchvision RandomErasing defaults, as the specification uses them
ERASE_RATIO = (0.3, 3.3)
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop default
ATTEMPTS = 10  # torchvision's tries at a crop or erase box before its fallback

Rand = Callable[..., Tensor]  # rand(*shape): uniform [0, 1) on the batch's device, from the caller's generator
Frame = tuple[Tensor, Tensor]  # per-sample face scale [B] and shift (x, y) as fractions of the side [B, 2]


# ---------------------------------------------------------------------------------------------
# Decode once


@dataclass
class DecodedImages:
    images: Tensor  # uint8 [N, C, H, W]; C is 1 when every image is grey, else 3
    labels: Tensor  # int64 [N]
    skipped: list[str] = field(default_factory=list)  # unreadable files left out (skip_bad=True)
    cache_file: Path | None = None  # None for in-memory sources (CSV rows), which need no cache
    reused: bool = False  # loaded from the cache rather than decoded


def default_cache_dir() -> Path:
    return Path(os.environ.get("FERKIT_CACHE") or Path.home() / ".cache" / "ferkit")


def decode_once(
    samples: list[Sample], cache_dir: str | os.PathLike | None = None, skip_bad: bool = False
) -> DecodedImages:
    """Every sample decoded into one uint8 tensor, reusing the on-disk cache when the files are unchanged.

    Images whose size differs from the most common one are resized (bilinear) to it, so one tensor
    holds them all. The cache is keyed by the files' paths, sizes and modification times, in order:
    editing, adding or removing a file builds a new one. Unreadable images raise load_image's
    FerkitError, or with ``skip_bad`` are left out and named in ``skipped``.
    """
    if not samples:
        raise FerkitError("no samples to decode; check the dataset path and split")
    if not all(isinstance(s.source, Path) for s in samples):
        # CSV rows are pixels already in memory: a cache would only copy them.
        return _decode(samples, skip_bad)[0]
    cache_file = Path(cache_dir or default_cache_dir()) / f"decoded-{_cache_key(samples)}.pt"
    cached = _read_cache(cache_file, samples)
    if cached is not None:
        images, bad = cached
        if bad and not skip_bad:
            raise FerkitError(next(iter(bad.values())))
        return DecodedImages(images, _labels(samples, bad), list(bad), cache_file, reused=True)
    decoded, bad = _decode(samples, skip_bad)
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        blob = {"version": CACHE_VERSION, "images": decoded.images, "bad": bad}
        write_atomically(cache_file, lambda f: torch.save(blob, f))
    except (OSError, FerkitError):
        log.warning(
            f"could not write the decode cache {cache_file}; continuing without it "
            "(set $FERKIT_CACHE to a writable folder with space)"
        )
    decoded.cache_file = cache_file
    return decoded


def _cache_key(samples: list[Sample]) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}".encode())
    for s in samples:
        try:
            st = os.stat(s.source)
            digest.update(f"{os.path.abspath(s.source)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{s.source}|missing\n".encode())
    return digest.hexdigest()[:32]


def _read_cache(path: Path, samples: list[Sample]) -> tuple[Tensor, dict[str, str]] | None:
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images, bad = blob["images"], blob["bad"]
        if blob["version"] != CACHE_VERSION or images.dtype != torch.uint8 or len(images) + len(bad) != len(samples):
            raise ValueError("mismatch")
    except Exception:  # a truncated or foreign file is only a cache miss: it is rebuilt
        log.warning(f"ignoring unreadable decode cache {path}; decoding again")
        return None
    return images, bad


def _labels(samples: list[Sample], bad: dict[str, str]) -> Tensor:
    return torch.tensor([s.label for s in samples if s.name not in bad], dtype=torch.int64)


def _decode_one(sample: Sample) -> np.ndarray | str:
    try:
        rgb = np.asarray(to_rgb(load_image(sample)))
    except FerkitError as e:
        return str(e)
    grey = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    return rgb[..., 0] if grey else rgb


def _decode(samples: list[Sample], skip_bad: bool) -> tuple[DecodedImages, dict[str, str]]:
    """The decoded images, and each unreadable file's error message (kept in the cache to raise later)."""
    # PIL releases the GIL while decoding, so threads overlap the per-file work.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_decode_one, samples, chunksize=64))
    arrays, bad = [], {}
    for sample, result in zip(samples, results):
        if isinstance(result, str):
            if not skip_bad:
                raise FerkitError(result)
            bad[sample.name] = result
        else:
            arrays.append(result)
    if not arrays:
        raise FerkitError("no readable image among the samples; run `ferkit data check` on the dataset")
    height, width = Counter(a.shape[:2] for a in arrays).most_common(1)[0][0]
    arrays = [
        a if a.shape[:2] == (height, width) else np.asarray(Image.fromarray(a).resize((width, height), Image.BILINEAR))
        for a in arrays
    ]
    if all(a.ndim == 2 for a in arrays):
        images = torch.from_numpy(np.stack(arrays))[:, None]
    else:
        rgb = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in arrays]
        images = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous()
    return DecodedImages(images, _labels(samples, bad), list(bad)), bad


# ---------------------------------------------------------------------------------------------
# Batches


def batches(
    images: Tensor,
    labels: Tensor,
    order: Tensor,
    batch_size: int,
    device: torch.device,
    pin: bool = True,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """uint8 image and label batches in ``order`` (indices into ``images``), on ``device``; ``labels`` may be class
    indices [N] or probabilities [N, classes].

    Indexing happens where ``images`` lives: put the decoded tensor on the GPU once when it fits
    (FER2013: 66 MB) and no step copies anything from the host. From host memory to a GPU, each
    batch is gathered into pinned memory and copied without blocking, so the copy overlaps compute.
    """
    order = order.to(images.device)
    crossing = pin and images.device.type == "cpu" and device.type == "cuda"
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        if crossing:
            # PyTorch's pinned-memory cache does not reuse a block until its copy has finished.
            x = torch.empty((len(index), *images.shape[1:]), dtype=images.dtype, pin_memory=True)
            y = torch.empty((len(index), *labels.shape[1:]), dtype=labels.dtype, pin_memory=True)
            torch.index_select(images, 0, index, out=x)
            torch.index_select(labels, 0, index, out=y)
        else:
            x, y = images.index_select(0, index), labels.index_select(0, index.to(labels.device))
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# ---------------------------------------------------------------------------------------------
# Batched transforms


class BatchAugment(nn.Module):
    """The specification's training augmentations for a uint8 batch, with per-sample parameters.

    ``forward(images, generator=None)``: uint8 ``[B, C, h, w]`` (C 1 or 3) on any device to the
    normalised float ``[B, 3, S, S]`` that ``build_train_transform(cfg)`` would give image by image.
    The generator, if given, must be on the batch's device; parameters are drawn there, so a CUDA
    batch never waits for the host.
    """

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.cfg, self.size, self.grey = cfg, cfg.image_size, cfg.grey_input
        # Buffers, so that they follow .to(device).
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        cfg, n = self.cfg, images.shape[0]
        x = self._unit_float(images)
        height, width = x.shape[-2:]

        def rand(*shape: int) -> Tensor:
            return torch.rand(shape, generator=generator, device=x.device)

        top, left, box_h, box_w = _crop_boxes(n, height, width, tuple(cfg.crop_scale), rand)
        frame = self._frames(n, x.device, rand)
        x = self._color(x, *_source_box(top, left, box_h, box_w, frame, height, width), rand)
        flip = rand(n) < cfg.flip_p
        angle = (rand(n) * 2 - 1) * cfg.rotation
        x = _warp(
            resize(x, self.size) if max(height, width) > self.size else x,
            top / height,
            left / width,
            box_h / height,
            box_w / width,
            flip,
            angle,
            frame,
            self.size,
        )
        x = self._degrade(x, rand, generator)
        return _erase(self._normalize(x), rand(n) < cfg.erasing_p, rand)

    def _frames(self, n: int, device: torch.device, rand: Rand) -> Frame:
        """Per-sample face scale and shift (fractions of the side) of RandomReframe; drawn only when on, so that
        with framing off every other draw is the one it always was."""
        cfg = self.cfg
        if not reframes(cfg):
            return torch.ones(n, device=device), torch.zeros(n, 2, device=device)
        low, high = cfg.frame_scale
        return low + (high - low) * rand(n), (rand(n, 2) * 2 - 1) * cfg.frame_shift

    def _degrade(self, x: Tensor, rand: Rand, generator: torch.Generator | None) -> Tensor:
        """Blur, JPEG, then noise, at the output size, as the reference runs them after its rotation."""
        cfg, n = self.cfg, x.shape[0]
        if cfg.blur_p > 0:
            apply = (rand(n) < cfg.blur_p).view(-1, 1, 1, 1)
            low, high = cfg.blur_sigma
            x = torch.where(apply, _blur(x, low + (high - low) * rand(n), blur_kernel_size(high)), x)
        if cfg.jpeg_p > 0:
            apply = rand(n) < cfg.jpeg_p
            low, high = (int(q) for q in cfg.jpeg_quality)
            # Whole qualities, uniform on [low, high] as the reference's randint draws them.
            x = _jpeg(x, apply, (low + rand(n) * (high - low + 1)).floor().clamp_(max=high))
        if cfg.noise_p > 0:
            apply = (rand(n) < cfg.noise_p).view(-1, 1, 1, 1)
            # As SensorNoise: one draw for a grey input's single channel, else one per channel (a grey image of a
            # dataset read in colour gets three, as the reference gives it).
            x = x if self.grey else x.expand(-1, 3, -1, -1)
            noise = torch.randn(x.shape, generator=generator, device=x.device) * cfg.noise_std
            x = torch.where(apply, (x + noise).clamp_(0, 1), x)
        return x

    def _unit_float(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise FerkitError(
                f"expected a uint8 batch [B, 1 or 3, H, W], got {images.dtype} {tuple(images.shape)}; "
                "pass the tensor from decode_once/batches"
            )
        x = images.float().div_(255)
        x = _grey(x) if self.grey else x
        if self.cfg.equalize:  # on uint8 levels after the grey conversion, as the reference equalizes
            x = TF.equalize(x.mul(255).round_().to(torch.uint8)).float().div_(255)
        return x

    def _normalize(self, x: Tensor) -> Tensor:
        return (x.expand(-1, 3, -1, -1) - self.mean) / self.std

    def _color(self, x: Tensor, top: Tensor, left: Tensor, box_h: Tensor, box_w: Tensor, rand: Rand) -> Tensor:
        cfg, n = self.cfg, x.shape[0]
        jitter = rand(n) < cfg.jitter_p
        factors = [
            _factor_range(cfg.brightness, rand(n)),
            _factor_range(cfg.contrast, rand(n)),
            _factor_range(cfg.saturation, rand(n)),
            (rand(n) * 2 - 1) * cfg.hue,
        ]
        # torchvision draws a random order of the four ops for every image; so does this, per sample.
        order = rand(n, 4).argsort(dim=1)
        grey = (rand(n) < cfg.grayscale_p).view(-1, 1, 1, 1)
        ops = [  # ColorJitter's order of fn_idx: brightness, contrast, saturation, hue
            (cfg.brightness, lambda img, f: _blend(img, 0.0, f)),
            (cfg.contrast, lambda img, f: _blend(img, _box_mean(_grey(img), top, left, box_h, box_w), f)),
            (cfg.saturation, lambda img, f: _blend(img, _grey(img), f)),
            (cfg.hue, _shift_hue),
        ]
        # Saturation, hue and grayscale leave a grey image as it is: a 1-channel batch skips them.
        colour = x.shape[1] == 3
        for position in range(4):
            for index, (strength, op) in enumerate(ops):
                if strength == 0 or (index >= 2 and not colour):  # torchvision skips a zero strength too
                    continue
                chosen = (jitter & (order[:, position] == index)).view(-1, 1, 1, 1)
                x = torch.where(chosen, op(x, factors[index]), x)
        x = torch.where(grey, _grey(x).expand_as(x), x) if colour else x
        if cfg.gamma > 0:
            x = x.pow(torch.exp((rand(n) * 2 - 1) * cfg.gamma).view(-1, 1, 1, 1))
        return x


def _factor_range(strength: float, u: Tensor) -> Tensor:
    """ColorJitter's factor for brightness, contrast and saturation: uniform in [max(0, 1-s), 1+s]."""
    low = max(0.0, 1 - strength)
    return low + u * (1 + strength - low)


def _blend(x: Tensor, other: Tensor | float, factor: Tensor) -> Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1 - f)).clamp_(0, 1)


def _grey(x: Tensor) -> Tensor:
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(dim=1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _box_mean(grey: Tensor, top: Tensor, left: Tensor, box_h: Tensor, box_w: Tensor) -> Tensor:
    """Per-sample mean of ``grey`` over the part of its crop box inside the image: what torchvision's contrast
    sees after cropping (less, on a reframed image, the border's repeated edge pixels)."""
    rows = torch.arange(grey.shape[-2], device=grey.device)
    cols = torch.arange(grey.shape[-1], device=grey.device)
    in_rows = ((rows >= top[:, None]) & (rows < (top + box_h)[:, None])).float()
    in_cols = ((cols >= left[:, None]) & (cols < (left + box_w)[:, None])).float()
    total = torch.einsum("bhw,bh,bw->b", grey[:, 0], in_rows, in_cols)
    return (total / (in_rows.sum(dim=1) * in_cols.sum(dim=1)).clamp_(min=1)).view(-1, 1, 1, 1)


def _source_box(
    top: Tensor, left: Tensor, box_h: Tensor, box_w: Tensor, frame: Frame, height: int, width: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A crop box of the reframed image in the source's pixels (the same box when framing is off)."""
    scale, shift = frame
    return (
        (top - height / 2) / scale + height / 2 + shift[:, 1] * height,
        (left - width / 2) / scale + width / 2 + shift[:, 0] * width,
        box_h / scale,
        box_w / scale,
    )


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """RGB -> HSV, hue + shift (mod 1), -> RGB, per sample; torchvision's adjust_hue in closed form."""
    value, _ = x.max(dim=1, keepdim=True)
    chroma = value - x.min(dim=1, keepdim=True)[0]
    r, g, b = x.unbind(dim=1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))[:, 0]
    v = value[:, 0]
    hue = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = ((hue / 6 + shift.view(-1, 1, 1)) % 1).unsqueeze(1)
    # Each channel is value minus chroma times a trapezoid of hue: https://en.wikipedia.org/wiki/HSL_and_HSV
    k = (torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1) + hue * 6) % 6
    return value - chroma * torch.minimum(k, 4 - k).clamp(0, 1)


def _boxes(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    fit_height: int,
    fit_width: int,
    rand: Rand,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """torchvision's box rule, for every sample at once: (top, left, h, w, found) in integer pixels.

    Up to 10 draws of an area (uniform in ``scale`` of the image) and a width/height ratio
    (log-uniform in ``ratio``); the first draw that fits in ``fit_height`` x ``fit_width`` wins,
    placed uniformly at random. ``found`` is False where none fitted.
    """
    target = height * width * (scale[0] + (scale[1] - scale[0]) * rand(n, ATTEMPTS))
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * rand(n, ATTEMPTS))
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= fit_width) & (h > 0) & (h <= fit_height)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first of equal maxima
    h, w = h.gather(1, first)[:, 0], w.gather(1, first)[:, 0]
    top = torch.floor(rand(n) * (height - h + 1))
    left = torch.floor(rand(n) * (width - w + 1))
    return top, left, h, w, fits.any(dim=1)


def _crop_boxes(
    n: int, height: int, width: int, scale: tuple[float, float], rand: Rand
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """RandomResizedCrop's boxes; where no draw fits, torchvision's fallback: the largest centred box in ratio."""
    top, left, h, w, found = _boxes(n, height, width, scale, CROP_RATIO, height, width, rand)
    in_ratio = width / height
    fallback_w = float(width if in_ratio <= max(CROP_RATIO) else round(height * max(CROP_RATIO)))
    fallback_h = float(height if in_ratio >= min(CROP_RATIO) else round(width / min(CROP_RATIO)))
    h = torch.where(found, h, fallback_h)
    w = torch.where(found, w, fallback_w)
    top = torch.where(found, top, torch.floor((height - h) / 2))
    left = torch.where(found, left, torch.floor((width - w) / 2))
    return top, left, h, w


def _warp(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    box_h: Tensor,
    box_w: Tensor,
    flip: Tensor,
    angle: Tensor,
    frame: Frame,
    size: int,
) -> Tensor:
    """Reframe, crop box (as fractions of the reframed image) resized to size x size, flip, rotate, in one warp.

    Output pixel p (normalised coordinates, align_corners=False) reads the cropped-and-flipped image
    at q = R p (torchvision's rotation, counter-clockwise on screen for a positive angle), which
    reads the reframed image at y = A F q + t, with F the mirror, A the box's scale and t its centre,
    which reads the source at y / s + 2 d (RandomReframe's face scale s and shift d, fractions of the
    side). Where q falls outside the image the rotation's fill (0) is used; elsewhere the source's edge
    pixels are repeated, as torchvision's resize does at a crop touching the border and RandomReframe
    beyond it. With s = 1 and d = 0 the last step changes no bit.
    """
    scale, shift = frame
    radians = torch.deg2rad(angle).view(-1, 1, 1)
    cos, sin = torch.cos(radians), torch.sin(radians)
    centres = (torch.arange(size, device=x.device) * 2 + 1) / size - 1  # pixel centres, align_corners=False
    u, v = centres.view(1, 1, size), centres.view(1, size, 1)
    qx, qy = cos * u - sin * v, sin * u + cos * v
    inside = ((qx.abs() <= 1) & (qy.abs() <= 1)).unsqueeze(1)
    mirror = torch.where(flip, -1.0, 1.0).view(-1, 1, 1)
    grid = torch.stack(
        [
            qx * (box_w.view(-1, 1, 1) * mirror) + (2 * left + box_w - 1).view(-1, 1, 1),
            qy * box_h.view(-1, 1, 1) + (2 * top + box_h - 1).view(-1, 1, 1),
        ],
        dim=-1,
    )
    grid = grid / scale.view(-1, 1, 1, 1) + 2 * shift.view(-1, 1, 1, 2)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return warped * inside


def _blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """torchvision's gaussian_blur (its kernel, reflect padding) with one sigma per sample, as two 1-d passes."""
    n, channels = x.shape[:2]
    half = (kernel_size - 1) / 2
    taps = torch.linspace(-half, half, kernel_size, device=x.device)
    kernel = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)
    # Each (sample, channel) is a group of its own, so one convolution blurs every sample with its own sigma.
    flat = x.reshape(1, n * channels, *x.shape[-2:])
    pad = kernel_size // 2
    for padding, shape in (((pad, pad, 0, 0), (1, kernel_size)), ((0, 0, pad, pad), (kernel_size, 1))):
        flat = F.conv2d(F.pad(flat, padding, mode="reflect"), kernel.view(-1, 1, *shape), groups=len(kernel))
    return flat.view_as(x)


def _jpeg(x: Tensor, apply: Tensor, quality: Tensor) -> Tensor:
    """The chosen images [B, C, S, S] in [0, 1] through :func:`jpeg` at their own quality, on the host."""
    chosen = apply.nonzero().flatten().tolist()
    if not chosen:
        return x
    quality = quality.tolist()
    codec = x[chosen].mul(255).round_().to("cpu", torch.uint8)
    x = x.clone()
    x[chosen] = torch.stack([jpeg(one, int(quality[i])) for one, i in zip(codec, chosen)]).to(x).div_(255)
    return x


def _erase(x: Tensor, apply: Tensor, rand: Rand) -> Tensor:
    """RandomErasing(value=0) after normalisation; no box when none of the 10 draws fits, as torchvision."""
    n, size = x.shape[0], x.shape[-1]
    # torchvision's ratio is h/w; _boxes takes w/h, the reciprocal range with the same log-uniform law.
    ratio = (1 / ERASE_RATIO[1], 1 / ERASE_RATIO[0])
    top, left, h, w, found = _boxes(n, size, size, ERASE_SCALE, ratio, size - 1, size - 1, rand)
    pixels = torch.arange(size, device=x.device)
    rows = (pixels >= top[:, None]) & (pixels < (top + h)[:, None])
    cols = (pixels >= left[:, None]) & (pixels < (left + w)[:, None])
    erased = (apply & found)[:, None, None] & rows[:, :, None] & cols[:, None, :]
    return x.masked_fill(erased[:, None], 0.0)

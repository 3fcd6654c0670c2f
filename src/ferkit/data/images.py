"""Image files and their pixels: which files count as images, and the one way any image becomes RGB.

Training, evaluation, prediction and the server all decode through :func:`upright` and convert through
:func:`to_rgb`, so a file gives the same pixels whichever of them reads it.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import FerkitError
from .urls import as_local, fetch, is_url, shown

IMAGE_SUFFIXES = {
    *(".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".avif"),
    *(".heic", ".heif"),  # phones' photos (iPhones save HEIC by default), read through pi-heif
}
FORMATS = "JPEG, PNG, BMP, GIF, TIFF, WebP, AVIF or HEIC"
# The formats whose files may hold an animation (a reaction GIF, an animated WebP or PNG), read as videos and drawn
# as animations of their own kind: suffix -> PIL's format.
ANIMATED_FORMATS = {".gif": "GIF", ".webp": "WEBP", ".png": "PNG"}
ANIMATED_SUFFIXES = set(ANIMATED_FORMATS)

# A file's path or a photo's web address, a decoded image, or an encoded file's bytes (an upload, a download) or a
# binary file object.
ImageInput = str | os.PathLike | Image.Image | np.ndarray | bytes | BinaryIO


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def is_animated(source: str | os.PathLike | BinaryIO) -> bool:
    """Whether a GIF, WebP or PNG (a file, or an upload's bytes in a file object) holds more than one frame (its header
    says so, or a second frame follows the first); False for anything else, a phone's MPO photo or a multi-page TIFF
    included (photos, not animations), and for what PIL cannot open (said when it is read)."""
    if isinstance(source, str | os.PathLike) and Path(source).suffix.lower() not in ANIMATED_SUFFIXES:
        return False
    try:
        with Image.open(source) as image:
            return image.format in ANIMATED_FORMATS.values() and bool(getattr(image, "is_animated", False))
    except (OSError, ValueError, Image.DecompressionBombError):
        return False


def announces_frames(head: bytes) -> bool:
    """Whether the first bytes of a GIF, PNG or WebP file say that it holds more than one frame: a GIF's second image
    (or first bytes that end inside its first image or before it: the rest may hold more, and the web's GIFs mostly
    move), an APNG's frame count (its acTL chunk comes before the pixels) or an animated WebP's flag; False for
    anything else."""
    if head.startswith(b"GIF8"):
        return _gif_images(head) != 1
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        at = 8
        while at + 12 <= len(head):
            length, kind = struct.unpack(">I4s", head[at : at + 8])
            if kind == b"acTL":
                return struct.unpack(">I", head[at + 8 : at + 12])[0] > 1
            if kind == b"IDAT":
                return False
            at += 12 + length
        return False
    return head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) > 20 and bool(head[20] & 0x02)


def _gif_images(head: bytes) -> int | None:
    """How many images a GIF's blocks hold, counting to 2; None where ``head`` ends before the trailer or a second
    image says."""

    def colours(packed: int) -> int:  # a colour table's bytes, where the flag says one follows
        return 3 << ((packed & 7) + 1) if packed & 0x80 else 0

    def after_blocks(at: int) -> int:  # data sub-blocks, each its length and bytes, up to the empty one
        while at < len(head) and head[at]:
            at += head[at] + 1
        return at + 1

    if len(head) < 13:
        return None
    at, images = 13 + colours(head[10]), 0
    while at < len(head):
        if head[at] == 0x21:  # an extension: its label, then its blocks
            at = after_blocks(at + 2)
        elif head[at] == 0x2C:  # an image: its descriptor, its colours, the LZW code size, then its blocks
            images += 1
            if images > 1 or at + 10 > len(head):
                return images if images > 1 else None
            at = after_blocks(at + 10 + colours(head[at + 9]) + 1)
        else:  # the trailer (or bytes no GIF has): nothing follows
            return images
    return None


def list_images(folder: Path) -> list[Path]:
    """The image files anywhere under ``folder``, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p))


def upright(image: Image.Image) -> Image.Image:
    """The image decoded and turned as viewers show it: phone photos store their pixels sideways plus an EXIF
    rotation, and face detection finds upright faces (whose boxes then match what users see)."""
    return ImageOps.exif_transpose(image)


class UndecodableImage(FerkitError):
    """A file that is not a usable image; ``reason`` says why in one line, for the caller to name the file."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManyPixels(UndecodableImage):
    """An image refused for its size alone; ``size`` is (width, height) when its header gave them."""

    def __init__(self, reason: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(reason)
        self.size = size


def open_image(source: str | os.PathLike | BinaryIO, max_pixels: int | None = None) -> Image.Image:
    """A file fully decoded (a truncated file fails here, not later) and upright, or an :class:`UndecodableImage`.

    With ``max_pixels`` an image is refused by its header's size before its pixels are decoded.
    """
    heif = _read_heif()
    try:
        with Image.open(source) as image:
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise TooManyPixels(f"{image.width}x{image.height} pixels", image.size)
            return upright(image)
    except UndecodableImage:
        raise
    except Image.DecompressionBombError as e:
        raise TooManyPixels(_first_line(e)) from None
    except Exception as e:  # decoders fail on hostile bytes in many ways; all mean "not a usable image"
        if isinstance(e, UnidentifiedImageError):
            if _is_empty(source):  # a download or copy that failed: no format to name
                raise UndecodableImage("the file is empty (0 bytes)") from None
            missing = "" if heif else " (HEIC photos need pi-heif: pip install pi-heif)"
            raise UndecodableImage(f"not an image format PIL can decode{missing}") from None
        raise UndecodableImage(_first_line(e)) from None


def _is_empty(source: str | os.PathLike | BinaryIO) -> bool:
    try:
        if hasattr(source, "seek"):
            return source.seek(0, io.SEEK_END) == 0
        return os.path.getsize(source) == 0
    except OSError:  # a stream that cannot seek: not known to be empty
        return False


@functools.cache
def _read_heif() -> bool:
    """Pillow taught HEIF/HEIC by pi-heif (once, at the first image read: its import is not free); False where
    pi-heif is not installed (a ``pip install --no-deps``)."""
    try:
        import pi_heif
    except ImportError:
        return False
    pi_heif.register_heif_opener()
    return True


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    """Any PIL image (L, LA, P, RGBA, CMYK, 16-bit, float) or an HxW, HxWx3 or HxWx4 array as 8-bit RGB."""
    if isinstance(image, np.ndarray):
        return Image.fromarray(rgb_array(image))
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit and float greyscale: scaled to 8 bits, which PIL's own conversion would clip instead.
        pixels = np.asarray(image, dtype=np.float32)
        span = max(float(pixels.max() - pixels.min()), 1e-6)
        image = Image.fromarray(((pixels - pixels.min()) / span * 255).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def rgb_array(image: np.ndarray) -> np.ndarray:
    """An HxW, HxWx3 or HxWx4 array as contiguous 8-bit RGB, without a copy where it is one already (a video's
    frames, a decoded photo: 36 MB for a phone's)."""
    if image.size == 0 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise FerkitError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {image.shape}")
    pixels = _as_uint8(image)
    return np.ascontiguousarray(np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels[..., :3])


def _as_uint8(pixels: np.ndarray) -> np.ndarray:
    """An array's pixels as 8 bits by its type's convention (scikit-image's): floats over [0, 1], 16-bit integers over
    0-65535, other numbers as 0-255 levels. Cast as they are, a float photo would be read black, with no face."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if not (np.issubdtype(pixels.dtype, np.floating) or np.issubdtype(pixels.dtype, np.integer)):
        raise FerkitError(f"expected an image array of numbers, got dtype {pixels.dtype}")
    low, high = float(pixels.min()), float(pixels.max())
    if np.issubdtype(pixels.dtype, np.floating) and 0 <= low and high <= 1:
        return np.round(pixels * 255).astype(np.uint8)
    if 0 <= low and high <= 255:
        return np.round(pixels).astype(np.uint8)
    raise FerkitError(
        f"an image array of {pixels.dtype} holds values from {low:g} to {high:g}; give 0-255 levels (uint8), floats "
        "in [0, 1] or uint16"
    )


def read_image(source: ImageInput) -> np.ndarray:
    """RGB uint8 pixels (HxWx3) of a file, a photo's http(s) address, a PIL image, an array, or an encoded file's
    bytes or binary file object; an unreadable one is a FerkitError."""
    if isinstance(source, np.ndarray):
        return rgb_array(source)
    if isinstance(source, Image.Image):
        return np.asarray(to_rgb(upright(source)))
    if isinstance(source, (bytes, bytearray)) or hasattr(source, "read"):
        what = getattr(source, "name", None) or "the image's bytes"
        encoded = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    elif not isinstance(source, (str, os.PathLike)):
        raise FerkitError(
            "expected an image file's path, a photo's http(s) address, a PIL image, an image array, or an encoded "
            f"file's bytes or binary file, got {type(source).__name__}"
        )
    elif is_url(source):
        what, encoded = shown(source), io.BytesIO(fetch(source))
    else:
        what = encoded = Path(as_local(source))
        if not encoded.is_file():
            raise FerkitError(f"{encoded} does not exist or is not a file")
    try:
        image = open_image(encoded)
    except UndecodableImage as e:
        raise FerkitError(f"cannot read {what}: {e.reason}; pass a {FORMATS} image") from None
    return np.asarray(to_rgb(image))

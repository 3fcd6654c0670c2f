"""One image module: one set of image suffixes, one decode-to-RGB path for training, prediction and the server."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_sideways, write_animation
from PIL import Image
from skimage.data import astronaut

from ferkit.data.datasets import Sample, load_image, read_image_folder
from ferkit.data.images import IMAGE_SUFFIXES, announces_frames, is_animated, list_images, read_image
from ferkit.data.preprocess import ToRGB
from ferkit.errors import FerkitError
from ferkit.inference import Predictor


def _sideways_photo(path) -> np.ndarray:
    """A JPEG stored as phones store portraits, of a picture with a red band at the top."""
    upright = np.zeros((40, 24, 3), np.uint8)
    upright[:10] = (250, 20, 20)  # a red band at the top, as viewers show it
    save_sideways(upright, path)
    return upright


def _sixteen_bit_png(path) -> None:
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(path)


def _every_reader(path) -> list[np.ndarray]:
    pixels = [read_image(path), np.asarray(ToRGB()(load_image(Sample(path, 0, str(path)))))]
    serve = pytest.importorskip("ferkit.serve.app")
    pixels.append(serve.decode_image(path.read_bytes(), path.name, 10**6))
    return pixels


def test_an_exif_rotated_photo_is_upright_for_every_reader(tmp_path):
    upright = _sideways_photo(tmp_path / "phone.jpg")
    for pixels in _every_reader(tmp_path / "phone.jpg"):
        assert pixels.shape == upright.shape
        assert pixels[:10, :, 0].mean() > 200 and pixels[-10:, :, 0].mean() < 50


def test_a_sixteen_bit_image_is_scaled_alike_for_every_reader(tmp_path):
    _sixteen_bit_png(tmp_path / "depth.png")
    first, *others = _every_reader(tmp_path / "depth.png")
    assert first.dtype == np.uint8 and first.shape == (32, 32, 3) and (first.min(), first.max()) == (0, 255)
    for pixels in others:
        assert np.array_equal(pixels, first)


def test_datasets_and_prediction_take_the_same_image_files(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "happy").mkdir(parents=True)
    for suffix in sorted(IMAGE_SUFFIXES):
        save_image(Image.new("L", (8, 8)), tmp_path / "train" / "happy" / f"a{suffix}")
    (tmp_path / "train" / "happy" / "notes.txt").write_text("not an image")
    in_dataset = read_image_folder(tmp_path)["train"]["Happy"]
    assert in_dataset == list_images(tmp_path / "train")
    assert {p.suffix for p in in_dataset} == IMAGE_SUFFIXES


def save_image(image: Image.Image, path: Path) -> None:
    """In the format its suffix names; HEIC and HEIF through pillow-heif, since ferkit's pi-heif only decodes."""
    suffix = path.suffix.lower()
    if suffix in (".heic", ".heif"):
        pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (in ferkit[dev]) writes HEIC files")
        pillow_heif.from_pillow(image.convert("RGB")).save(path, quality=90)
    else:
        image.save(path, format={".jpg": "JPEG", ".tif": "TIFF", ".pgm": "PPM"}.get(suffix, suffix[1:].upper()))


def test_phone_photos_in_heic_and_avif_read_as_the_png_does(tmp_path):
    photo = Image.fromarray(astronaut())
    save_image(photo, tmp_path / "astronaut.png")
    for name in ("IMG_0001.HEIC", "photo.heif", "web.avif"):  # the names iPhones and browsers give them
        save_image(photo, tmp_path / name)
    assert [p.name for p in list_images(tmp_path)] == ["IMG_0001.HEIC", "astronaut.png", "photo.heif", "web.avif"]
    png, *lossy = (_every_reader(tmp_path / name) for name in ("astronaut.png", "IMG_0001.HEIC", "web.avif"))
    for readers in lossy:
        for pixels in readers:
            assert pixels.shape == png[0].shape and pixels.dtype == np.uint8
            assert np.abs(pixels.astype(int) - png[0]).mean() < 4  # lossy codecs at quality 80-90


def test_without_pi_heif_a_heic_photo_says_what_to_install(tmp_path):
    save_image(Image.fromarray(astronaut()), tmp_path / "IMG_0001.HEIC")
    code = (
        "import sys; sys.modules['pi_heif'] = None\n"  # as after `pip install --no-deps`
        "from ferkit.data.images import read_image\n"
        f"read_image({str(tmp_path / 'IMG_0001.HEIC')!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "FerkitError: cannot read" in result.stderr
    assert "not an image format PIL can decode (HEIC photos need pi-heif: pip install pi-heif)" in result.stderr


def test_arrays_of_any_usual_layout_become_rgb_and_others_are_refused():
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert np.array_equal(read_image(grey), np.repeat(grey[..., None], 3, axis=2))
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert read_image(rgba).shape == (3, 4, 3)
    with pytest.raises(FerkitError, match=r"expected an HxW, HxWx3 or HxWx4 image array, got shape \(3, 4, 2\)"):
        read_image(np.zeros((3, 4, 2), np.uint8))


def test_arrays_of_other_types_are_read_by_their_conventions_so_a_float_photo_keeps_its_faces():
    photo = astronaut()
    # scikit-image's float convention ([0, 1]), 16-bit, and 0-255 levels held as floats or wider integers.
    for given in (photo / 255.0, photo.astype(np.float32) / 255, photo.astype(np.uint16) * 257, photo.astype(np.int64)):
        assert np.array_equal(read_image(given), photo)
    assert np.array_equal(read_image(photo.astype(np.float64)), photo)  # levels above 1: not scaled again
    assert np.array_equal(read_image(np.array([[True, False]])), [[[255] * 3, [0] * 3]])
    # An 8-bit RGB array is read as it is, not copied (a phone's photo is 36 MB); prediction leaves it unchanged.
    assert np.shares_memory(read_image(photo), photo)
    kept = photo.copy()
    # The product's path: the float photo's face is found and read as the uint8 photo's.
    predictor = Predictor.default()
    as_float, as_uint8 = predictor.predict(photo / 255.0), predictor.predict(photo)
    assert np.array_equal(photo, kept)
    assert len(as_float.faces) == 1 and as_float.faces[0].probabilities == as_uint8.faces[0].probabilities
    for bad in (photo * 2.0, photo.astype(np.int16) - 10):
        with pytest.raises(FerkitError, match=r"holds values from -?\d+ to \d+; give 0-255 levels \(uint8\)"):
            read_image(bad)
    for wrong in (None, 3):
        with pytest.raises(FerkitError, match=rf"^expected an image file's path, .* got {type(wrong).__name__}$"):
            read_image(wrong)


def test_a_file_that_is_not_an_image_is_explained_alike_by_every_reader(tmp_path):
    path = tmp_path / "notes.png"
    path.write_bytes(b"not a picture")
    reason = "not an image format PIL can decode"
    with pytest.raises(FerkitError, match=rf"cannot read .*notes\.png: {reason}; pass a JPEG"):
        read_image(path)
    with pytest.raises(FerkitError, match=rf"cannot read image .*notes\.png: {reason}; delete or replace it"):
        load_image(Sample(path, 0, str(path)))
    serve = pytest.importorskip("ferkit.serve.app")
    with pytest.raises(serve.HTTPException) as refused:
        serve.decode_image(path.read_bytes(), path.name, 10**6)
    assert refused.value.status_code == 415
    assert f"cannot decode 'notes.png' as an image ({reason})" in refused.value.detail


def test_an_empty_file_is_called_empty(tmp_path):
    path = tmp_path / "download.jpg"
    path.write_bytes(b"")
    for source in (path, b"", io.BytesIO()):
        with pytest.raises(FerkitError, match=r": the file is empty \(0 bytes\); pass a JPEG"):
            read_image(source)


def test_animated_gif_webp_and_png_are_told_from_still_ones(tmp_path):
    frames = [astronaut(), astronaut()[::-1]]
    for suffix in (".gif", ".webp", ".png"):
        assert is_animated(write_animation(frames, tmp_path / f"moving{suffix}", [100, 100]))
        Image.fromarray(astronaut()).save(tmp_path / f"still{suffix}")
        assert not is_animated(tmp_path / f"still{suffix}")
    (tmp_path / "broken.gif").write_bytes(b"GIF89a and then nothing")
    write_animation(frames, tmp_path / "moving.tif", [100, 100])  # a multi-page TIFF is a document, not a video
    assert not any(is_animated(tmp_path / name) for name in ("broken.gif", "missing.gif", "moving.tif"))


def test_a_files_first_bytes_tell_an_animation_as_pil_does_and_a_gif_cut_short_counts_as_one(tmp_path):
    small = [astronaut()[::8, ::8], astronaut()[::8, ::-8]]  # 64x64: each file within the first 64 kB asked for
    files = {}
    for suffix in (".gif", ".webp", ".png"):
        files[f"moving{suffix}"] = write_animation(small, tmp_path / f"moving{suffix}", [100, 100])
        Image.fromarray(small[0]).save(files.setdefault(f"still{suffix}", tmp_path / f"still{suffix}"))
    # A GIF whose second image comes after a comment and an image with its own colour table.
    first, second = (Image.fromarray(f).quantize(64) for f in small)
    first.save(tmp_path / "local.gif", save_all=True, append_images=[second], duration=100, comment=b"a test's")
    files["local.gif"] = tmp_path / "local.gif"
    for name, path in files.items():
        assert len(path.read_bytes()) < 64 * 1024, name
        assert announces_frames(path.read_bytes()) == is_animated(path), name
    # A still GIF's first bytes that end before its trailer cannot say it is still: it counts as an animation.
    still = files["still.gif"].read_bytes()
    assert all(announces_frames(still[:n]) for n in (6, 12, 13, 800, len(still) - 1))
    assert not announces_frames(b"<html>") and not announces_frames(b"")

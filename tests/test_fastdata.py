"""The fast input pipeline: decode cache, batches, and BatchAugment against the torchvision reference."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_csv
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ferkit.config import Config
from ferkit.data import batched as fastdata
from ferkit.data.batched import BatchAugment, batches, decode_once
from ferkit.data.datasets import Sample, load_image, load_splits
from ferkit.data.preprocess import build_test_transform, resize
from ferkit.data.transforms import build_train_transform, jpeg
from ferkit.errors import FerkitError

N_DRAWS = 400  # per pipeline: the fractions below then have a standard error of at most 0.025
SOURCE = 24  # source side; outputs are 32x32 to keep the reference pipeline quick
SMALL = Config(image_size=32)


def batch_test_transform(cfg: Config, images: torch.Tensor) -> torch.Tensor:
    """The test transform of a uint8 batch (resize, normalise), from BatchAugment's own steps."""
    augment = BatchAugment(cfg)
    return augment._normalize(resize(augment._unit_float(images), cfg.image_size))


def folder_samples(root: Path) -> list[Sample]:
    return load_splits(root).train


def test_decode_once_shapes_and_labels(image_folder: Path, tmp_path: Path) -> None:
    samples = folder_samples(image_folder)
    decoded = decode_once(samples, cache_dir=tmp_path / "cache")
    assert decoded.images.dtype == torch.uint8 and decoded.images.shape == (len(samples), 1, 20, 20)
    assert decoded.labels.dtype == torch.int64 and decoded.labels.tolist() == [s.label for s in samples]
    assert np.array_equal(decoded.images[3, 0].numpy(), np.asarray(load_image(samples[3])))
    assert not decoded.reused and decoded.cache_file.exists()


def test_cache_is_reused_without_decoding(image_folder: Path, tmp_path: Path, monkeypatch) -> None:
    samples = folder_samples(image_folder)
    first = decode_once(samples, cache_dir=tmp_path)

    def no_decoding(sample):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(fastdata, "load_image", no_decoding)
    second = decode_once(samples, cache_dir=tmp_path)
    assert second.reused and torch.equal(first.images, second.images)
    assert torch.equal(first.labels, second.labels)


def test_cache_is_rebuilt_when_a_file_changes(image_folder: Path, tmp_path: Path) -> None:
    samples = folder_samples(image_folder)
    decode_once(samples, cache_dir=tmp_path)
    changed = samples[0].source
    Image.fromarray(np.full((20, 20), 7, np.uint8)).save(changed)
    os.utime(changed, ns=(1, 1))  # a different mtime even on coarse-grained file systems
    again = decode_once(samples, cache_dir=tmp_path)
    assert not again.reused and int(again.images[0].max()) == 7
    assert decode_once(samples, cache_dir=tmp_path).reused


def test_corrupt_cache_is_rebuilt(image_folder: Path, tmp_path: Path) -> None:
    samples = folder_samples(image_folder)
    cache_file = decode_once(samples, cache_dir=tmp_path).cache_file
    cache_file.write_bytes(b"not a cache")
    again = decode_once(samples, cache_dir=tmp_path)
    assert not again.reused and again.images.shape[0] == len(samples)


def test_colour_and_mixed_sizes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    files = []
    for i, size in enumerate((16, 16, 12)):
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(files[-1])
    files.append(tmp_path / "grey.png")
    Image.fromarray(np.full((16, 16), 9, np.uint8)).save(files[-1])
    decoded = decode_once([Sample(f, 0, str(f)) for f in files], cache_dir=tmp_path / "cache")
    # Colour makes the whole tensor 3 channels; the odd size is resized to the most common one.
    assert decoded.images.shape == (4, 3, 16, 16)
    assert (decoded.images[3] == 9).all()


def test_unreadable_image_error_and_skip(image_folder: Path, tmp_path: Path) -> None:
    samples = folder_samples(image_folder)
    bad = samples[5]
    Path(bad.source).write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(FerkitError) as expected:
        load_image(bad)
    with pytest.raises(FerkitError) as got:
        decode_once(samples, cache_dir=tmp_path)
    assert str(got.value) == str(expected.value)
    skipped = decode_once(samples, cache_dir=tmp_path, skip_bad=True)
    assert skipped.skipped == [bad.name] and skipped.images.shape[0] == len(samples) - 1
    assert skipped.labels.tolist() == [s.label for s in samples if s is not bad]
    # The cached result still refuses the file unless skipping is asked for.
    with pytest.raises(FerkitError, match="cannot read image"):
        decode_once(samples, cache_dir=tmp_path)


def test_csv_rows_need_no_cache(tmp_path: Path) -> None:
    samples = load_splits(make_csv(tmp_path / "fer.csv")).train
    decoded = decode_once(samples, cache_dir=tmp_path / "cache")
    assert decoded.cache_file is None and decoded.images.shape == (len(samples), 1, 48, 48)
    assert not (tmp_path / "cache").exists()


def test_batches_follow_the_order() -> None:
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    labels = torch.arange(10) % 7
    order = torch.tensor([3, 1, 4, 9, 5, 2, 6, 0, 8, 7])
    got = list(batches(images, labels, order, 4, torch.device("cpu")))
    assert [len(x) for x, _ in got] == [4, 4, 2]
    assert torch.cat([x[:, 0, 0, 0] for x, _ in got]).tolist() == order.tolist()
    assert torch.cat([y for _, y in got]).tolist() == (order % 7).tolist()
    assert [len(x) for x, _ in batches(images, labels, order, 4, torch.device("cpu"), drop_last=True)] == [4, 4]


# ---------------------------------------------------------------------------------------------
# BatchAugment against the reference pipeline


def gradient_image() -> np.ndarray:
    """Every channel brightens to the right, with a constant colour cast: left/right tells a flip, and
    the cast (hue 1/3 of a sextant, chroma 60) makes grayscale conversion visible."""
    x = np.arange(SOURCE) * 8.0
    rows = np.stack([x + 60, x + 20, x], axis=-1)
    return np.repeat(rows[None], SOURCE, axis=0).astype(np.uint8)


def geometry_image() -> np.ndarray:
    """Red grows with x and green with y, 8 levels a pixel: the output's gradients give crop size and angle."""
    yy, xx = np.mgrid[:SOURCE, :SOURCE] * 8.0
    return np.stack([xx + 20, yy + 20, np.full_like(xx, 100)], axis=-1).astype(np.uint8)


def reference_outputs(cfg: Config, image: np.ndarray, n: int = N_DRAWS) -> torch.Tensor:
    torch.manual_seed(0)
    transform = build_train_transform(cfg)
    pil = Image.fromarray(image)
    return torch.stack([transform(pil) for _ in range(n)])


def fast_outputs(cfg: Config, image: np.ndarray, n: int = N_DRAWS) -> torch.Tensor:
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).expand(n, -1, -1, -1).contiguous()
    return BatchAugment(cfg)(batch, torch.Generator().manual_seed(0))


def unnormalize(out: torch.Tensor, cfg: Config) -> torch.Tensor:
    return out * torch.tensor(cfg.std).view(1, 3, 1, 1) + torch.tensor(cfg.mean).view(1, 3, 1, 1)


def central_disc(size: int, radius: float = 0.35) -> torch.Tensor:
    """Pixels no rotation up to 45 degrees can fill, and no crop makes read past the source's edge."""
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    return (xx**2 + yy**2) <= (radius * size) ** 2


def plane_fit(channel: torch.Tensor, radius: float = 0.35) -> torch.Tensor:
    """Least-squares value at the centre, d/dx and d/dy of each image [N, S, S] over its central disc."""
    size = channel.shape[-1]
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    disc = central_disc(size, radius)
    design = torch.stack([torch.ones_like(xx[disc]), xx[disc], yy[disc]], dim=1)
    return torch.linalg.lstsq(design.expand(len(channel), -1, -1), channel[:, disc].unsqueeze(-1)).solution[..., 0]


def plane_gradients(channel: torch.Tensor) -> torch.Tensor:
    return plane_fit(channel)[:, 1:]


def test_geometry_statistics_match_the_reference() -> None:
    """Crop area and rotation angle, read back from the gradients of a known image, follow the reference's law."""
    cfg = SMALL.updated({"flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "erasing_p": 0.0})
    stats = {}
    for name, outputs in (
        ("reference", reference_outputs(cfg, geometry_image())),
        ("fast", fast_outputs(cfg, geometry_image())),
    ):
        raw = unnormalize(outputs, cfg) * 255
        red, green = plane_gradients(raw[:, 0]), plane_gradients(raw[:, 1])
        # An output pixel spans box/size source pixels, each 8 levels: |gradient| = 8 * box / size.
        box_w = red.norm(dim=1) * cfg.image_size / 8
        box_h = green.norm(dim=1) * cfg.image_size / 8
        angle = torch.rad2deg(torch.atan2(-red[:, 1], red[:, 0]))
        stats[name] = {"area": box_w * box_h / SOURCE**2, "angle": angle}
    for name, s in stats.items():
        assert s["area"].min() > 0.74 and s["area"].max() < 1.06, name
        assert s["angle"].abs().max() < cfg.rotation + 1.5, name
    ref, fast = stats["reference"], stats["fast"]
    assert abs(ref["area"].mean() - fast["area"].mean()) < 0.015
    assert abs(ref["area"].std() - fast["area"].std()) < 0.015
    assert abs(fast["angle"].mean()) < 2.0
    assert abs(ref["angle"].std() - fast["angle"].std()) < 1.5  # uniform on +-20 degrees: std 11.5


# Only the op under test: no crop, flip, colour, rotation or erasing.
STILL = SMALL.updated(
    {"crop_scale": (1.0, 1.0), "flip_p": 0.0, "jitter_p": 0.0, "grayscale_p": 0.0, "rotation": 0.0, "erasing_p": 0.0}
)


def test_framing_statistics_match_the_reference() -> None:
    """Face scale and shift, read back from the gradients and centre value of a known image, follow the same law."""
    cfg = STILL.updated({"frame_scale": (0.8, 1.2), "frame_shift": 0.1})
    stats = {}
    for name, outputs in (
        ("reference", reference_outputs(cfg, geometry_image())),
        ("fast", fast_outputs(cfg, geometry_image())),
    ):
        raw = unnormalize(outputs, cfg) * 255
        # The disc stays on the source even at scale 0.8 shifted by 10%; the repeated edges beyond have no gradient.
        red, green = plane_fit(raw[:, 0], 0.2), plane_fit(raw[:, 1], 0.2)
        # An output pixel spans SOURCE / (scale * size) source pixels, each 8 levels.
        scale = torch.cat([SOURCE * 8 / (cfg.image_size * red[:, 1]), SOURCE * 8 / (cfg.image_size * green[:, 2])])
        # The output's centre reads the source at its centre plus the shift, 20 + 8 * (pixel index) in each channel.
        shift = torch.cat([red[:, 0], green[:, 0]]).sub(20).div(8).add(0.5).div(SOURCE).sub(0.5)
        stats[name] = {"scale": scale, "shift": shift}
    for name, s in stats.items():
        assert 0.77 < s["scale"].min() < 0.83 and 1.17 < s["scale"].max() < 1.23, name
        assert s["shift"].abs().max() < 0.1 + 1 / SOURCE, name  # the reference rounds its box to whole pixels
    ref, fast = stats["reference"], stats["fast"]
    assert abs(ref["scale"].mean() - fast["scale"].mean()) < 0.01
    assert abs(ref["scale"].std() - fast["scale"].std()) < 0.01  # uniform on 0.8-1.2: std 0.115
    assert abs(fast["shift"].mean()) < 0.008
    assert abs(ref["shift"].std() - fast["shift"].std()) < 0.006  # uniform on +-0.1: std 0.058


@pytest.mark.parametrize("pipeline", [reference_outputs, fast_outputs])
def test_zooming_out_repeats_the_edge_pixels(pipeline) -> None:
    cfg = STILL.updated({"frame_scale": (0.6, 0.6)})
    raw = unnormalize(pipeline(cfg, geometry_image(), 4), cfg) * 255
    source = torch.from_numpy(geometry_image()).permute(2, 0, 1).float()
    # The source fills the middle 60%; all around it, the colours of its nearest edge, never black.
    border = round(cfg.image_size * 0.2) - 1
    assert (raw[:, :, :border, :border] - source[:, :1, :1]).abs().max() < 1
    assert (raw[:, :, -border:, -border:] - source[:, -1:, -1:]).abs().max() < 1
    # Above the source, its top row repeated: green (which grows downwards) at the top row's value.
    assert (raw[:, 1, :border] - source[1, 0, 0]).abs().max() < 1
    assert raw.min() > 15


def uniform_grey(value: int) -> np.ndarray:
    return np.full((SOURCE, SOURCE, 3), value, np.uint8)


def test_gamma_statistics_match_the_reference() -> None:
    cfg = STILL.updated({"image_size": SOURCE, "gamma": 0.5})
    logs = {}
    for name, pipeline in (("reference", reference_outputs), ("fast", fast_outputs)):
        value = unnormalize(pipeline(cfg, uniform_grey(128)), cfg).mean(dim=(1, 2, 3))
        logs[name] = torch.log(torch.log(value) / math.log(128 / 255))  # log gamma, uniform on +-0.5
    for name, log_gamma in logs.items():
        assert -0.53 < log_gamma.min() < -0.45 and 0.45 < log_gamma.max() < 0.53, name
        # The mean's standard error is 0.014; the reference's uint8 truncation adds about +0.006.
        assert abs(log_gamma.mean()) < 0.05 and abs(log_gamma.std() - 0.5 / math.sqrt(3)) < 0.02, name


def test_blur_and_noise_statistics_match_the_reference() -> None:
    """A blur lowers the contrast of fine stripes by its sigma; noise raises a flat image's spread by its std."""
    columns = np.arange(SOURCE) // 2 % 2 * 200 + 20  # stripes two pixels wide
    stripes = np.broadcast_to(columns[None, :, None], (SOURCE, SOURCE, 3))
    cfg = STILL.updated({"image_size": SOURCE, "blur_p": 0.6, "blur_sigma": (0.3, 1.5)})
    contrast = {
        name: unnormalize(pipeline(cfg, stripes.astype(np.uint8)), cfg)[:, 0, 4:-4, 4:-4].std(dim=(1, 2))
        for name, pipeline in (("reference", reference_outputs), ("fast", fast_outputs))
    }
    sharp = contrast["reference"].max()
    for name, c in contrast.items():
        # Sigma 0.3 leaves the stripes nearly as they are; 1.5 all but erases them.
        assert abs((c < 0.9 * sharp).float().mean() - 0.6 * 0.85) < 0.1, name
    for q in (0.1, 0.3, 0.5, 0.7):
        assert abs(contrast["reference"].quantile(q) - contrast["fast"].quantile(q)) < 0.03, q

    for grey in (False, True):
        cfg = STILL.updated({"image_size": SOURCE, "noise_p": 0.4, "noise_std": 0.05, "grey_input": grey})
        for name, pipeline in (("reference", reference_outputs), ("fast", fast_outputs)):
            raw = unnormalize(pipeline(cfg, uniform_grey(128)), cfg)
            spread = raw.std(dim=(2, 3))
            noisy = spread.mean(dim=1) > 0.01
            assert abs(noisy.float().mean() - cfg.noise_p) < 0.08, name
            assert abs(spread[noisy].mean() - cfg.noise_std) < 0.003, name
            # A colour sensor's channels each draw noise of their own; a grey input stays grey.
            across = (raw[noisy, 0] - raw[noisy, 1]).abs().mean()
            assert across < 1e-5 if grey else across > 0.02, (name, grey)


def test_blur_matches_torchvision() -> None:
    image = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(4))
    sigmas = [0.4, 1.0, 2.0]
    blurred = fastdata._blur(image, torch.tensor(sigmas), 13)
    for one, sigma, got in zip(image, sigmas, blurred):
        assert torch.allclose(got, TF.gaussian_blur(one, [13, 13], [sigma, sigma]), atol=1e-5)


@pytest.mark.parametrize("grey", [False, True])
def test_jpeg_statistics_match_the_reference(grey: bool) -> None:
    """Each output is the source's JPEG round trip at one quality, read back by matching: how many images are
    compressed and the law of their quality (uniform whole numbers) follow the reference's."""
    texture = np.random.default_rng(5).integers(0, 256, (SOURCE, SOURCE, 1), dtype=np.uint8).repeat(3, axis=-1)
    cfg = STILL.updated({"image_size": SOURCE, "jpeg_p": 0.5, "jpeg_quality": (20, 80), "grey_input": grey})
    source = torch.from_numpy(texture).permute(2, 0, 1).contiguous()
    qualities = torch.arange(20, 81)
    trips = torch.stack([jpeg(source, int(q)) for q in qualities]).float()
    drawn = {}
    for name, pipeline in (("reference", reference_outputs), ("fast", fast_outputs)):
        raw = unnormalize(pipeline(cfg, texture), cfg) * 255
        assert raw.shape == (N_DRAWS, 3, SOURCE, SOURCE), name
        touched = (raw - source.float()).abs().amax(dim=(1, 2, 3)) > 1
        assert abs(touched.float().mean() - cfg.jpeg_p) < 0.08, name
        distance = (raw[touched, None] - trips[None]).abs().mean(dim=(2, 3, 4))
        assert distance.amin(dim=1).max() < 0.01, name  # every compressed output is one of the round trips
        drawn[name] = qualities[distance.argmin(dim=1)].float()
    for name, q in drawn.items():
        assert q.min() <= 22 and q.max() >= 78, name
        # Uniform on 20..80: mean 50, standard deviation 17.9; the mean's standard error about 1.3.
        assert abs(q.mean() - 50) < 4 and abs(q.std() - 17.9) < 2.5, name
    assert abs(drawn["reference"].mean() - drawn["fast"].mean()) < 5


def test_jpeg_round_trip_keeps_shape_and_loses_more_at_lower_quality() -> None:
    image = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 16, 20), dtype=np.uint8))
    for channels in (1, 3):
        one = image[:channels]
        loss = [(jpeg(one, q).float() - one.float()).abs().mean() for q in (10, 50, 95)]
        assert jpeg(one, 50).shape == one.shape and jpeg(one, 50).dtype == torch.uint8
        assert loss[0] > loss[1] > loss[2] > 0


def test_augmentation_statistics_match_the_reference() -> None:
    # Probabilities away from the defaults, so a probability hard-wired to its default value fails.
    cfg = SMALL.updated({"flip_p": 0.3, "grayscale_p": 0.4, "erasing_p": 0.6})
    disc = central_disc(cfg.image_size)
    measured = {}
    for name, outputs in (
        ("reference", reference_outputs(cfg, gradient_image())),
        ("fast", fast_outputs(cfg, gradient_image())),
    ):
        assert outputs.shape == (N_DRAWS, 3, 32, 32) and outputs.dtype == torch.float32
        erased_pixels = (outputs == 0).all(dim=1)  # RandomErasing writes 0 after normalisation
        erased = erased_pixels.any(dim=(1, 2))
        raw = unnormalize(outputs, cfg)
        visible = disc & ~erased_pixels
        chroma = raw.amax(dim=1) - raw.amin(dim=1)
        median_chroma = torch.stack([c[v].median() for c, v in zip(chroma, visible)])
        brightness = torch.stack([r.mean(dim=0)[v].mean() for r, v in zip(raw, visible)])
        measured[name] = {
            "flipped": (plane_gradients(raw.sum(dim=1))[:, 0] < 0).float().mean().item(),
            "erased": erased.float().mean().item(),
            "erased_area": erased_pixels.float().mean(dim=(1, 2))[erased].mean().item(),
            "grey": (median_chroma < 1.5 / 255).float().mean().item(),
            # The source's colour cast (chroma 60) survives only where neither jitter nor grayscale ran.
            "untouched": ((median_chroma - 60 / 255).abs() < 1.5 / 255).float().mean().item(),
            "brightness_spread": brightness.std().item(),
            "mean": outputs[~erased].mean().item(),
            "std": outputs.std().item(),
            "pixel_mean": outputs.mean(dim=0),
            "pixel_std": outputs.std(dim=0),
        }
    ref, fast = measured["reference"], measured["fast"]
    untouched = (1 - cfg.jitter_p) * (1 - cfg.grayscale_p)
    for name, m in measured.items():
        assert abs(m["flipped"] - cfg.flip_p) < 0.08, (name, m["flipped"])
        assert abs(m["erased"] - cfg.erasing_p) < 0.08, (name, m["erased"])
        assert abs(m["grey"] - cfg.grayscale_p) < 0.08, (name, m["grey"])
        # Jitter factors within ~3% of 1 also leave the cast, hence the one-sided allowance.
        assert -0.05 < m["untouched"] - untouched < 0.1, (name, m["untouched"])
    assert abs(ref["flipped"] - fast["flipped"]) < 0.1
    assert abs(ref["erased"] - fast["erased"]) < 0.1
    assert abs(ref["erased_area"] - fast["erased_area"]) < 0.03
    assert abs(ref["grey"] - fast["grey"]) < 0.1
    assert abs(ref["untouched"] - fast["untouched"]) < 0.08
    assert abs(ref["brightness_spread"] - fast["brightness_spread"]) < 0.03  # 0.19 with brightness 0.8
    # The reference truncates to uint8 after each colour op (about -0.03 here); sampling noise is ~0.02.
    assert abs(ref["mean"] - fast["mean"]) < 0.08
    assert abs(ref["std"] - fast["std"]) < 0.05
    # Per-pixel maps over 400 draws are noisy (about 0.09 between two seeds of the same pipeline).
    assert (ref["pixel_mean"] - fast["pixel_mean"]).abs().mean() < 0.15
    assert (ref["pixel_std"] - fast["pixel_std"]).abs().mean() < 0.1


@pytest.mark.parametrize("equalize", [False, True])
def test_without_randomness_it_is_the_test_transform(equalize: bool) -> None:
    cfg = SMALL.updated(
        {
            "equalize": equalize,
            "crop_scale": (1.0, 1.0),
            "flip_p": 0.0,
            "jitter_p": 0.0,
            "grayscale_p": 0.0,
            "rotation": 0.0,
            "erasing_p": 0.0,
        }
    )
    image = gradient_image()
    batch = torch.from_numpy(image).permute(2, 0, 1).unsqueeze(0).repeat(4, 1, 1, 1)
    augmented = BatchAugment(cfg)(batch)
    tested = batch_test_transform(cfg, batch)
    assert torch.allclose(augmented, tested, atol=1e-5)
    reference = build_test_transform(cfg)(Image.fromarray(image))
    assert (tested[0] - reference).abs().max() < 1.5 / 255 / min(cfg.std)  # the reference rounds to uint8
    plain = build_test_transform(cfg.updated({"equalize": False}))(Image.fromarray(image))
    assert equalize == bool((reference - plain).abs().max() > 0.1)  # equalizing moves the gradient's levels


def test_warp_matches_torchvision_geometry() -> None:
    """One composed warp = resized_crop, horizontal_flip, then rotate (nearest, fill 0), up to interpolation."""
    source = torch.from_numpy(geometry_image()).permute(2, 0, 1).float().unsqueeze(0) / 255
    for top, left, height, width, flip, angle in [
        (2, 2, 20, 22, False, 0.0),
        (0, 0, 24, 24, True, 15.0),
        (4, 1, 19, 23, True, -12.0),
        (1, 2, 21, 20, False, 7.5),
    ]:
        reference = TF.resized_crop(source, top, left, height, width, [32, 32], antialias=False)
        reference = TF.rotate(TF.horizontal_flip(reference) if flip else reference, angle)
        tensor = lambda value: torch.tensor([float(value)])  # noqa: E731
        warped = fastdata._warp(
            source,
            tensor(top) / SOURCE,
            tensor(left) / SOURCE,
            tensor(height) / SOURCE,
            tensor(width) / SOURCE,
            torch.tensor([flip]),
            tensor(angle),
            (torch.ones(1), torch.zeros(1, 2)),
            32,
        )
        assert (warped - reference).abs().mean() < 0.01
        fill = lambda img: (img.sum(dim=1) == 0).sum().item()  # noqa: E731
        assert abs(fill(warped) - fill(reference)) <= 4


@pytest.mark.parametrize("hue", [-0.1, 0.04, 0.45])
def test_hue_matches_torchvision(hue: float) -> None:
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fastdata._shift_hue(image, torch.full((2,), hue)), TF.adjust_hue(image, hue), atol=1e-5)


def test_grey_batch_equals_its_colour_copy_and_is_reproducible() -> None:
    grey = torch.randint(0, 256, (16, 1, SOURCE, SOURCE), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    augment = BatchAugment(SMALL)
    one = augment(grey, torch.Generator().manual_seed(5))
    three = augment(grey.expand(-1, 3, -1, -1), torch.Generator().manual_seed(5))
    assert torch.allclose(one, three, atol=2e-3)  # grayscale weights sum to 0.9999
    assert torch.equal(one, augment(grey, torch.Generator().manual_seed(5)))
    assert not torch.equal(one, augment(grey, torch.Generator().manual_seed(6)))


def test_large_sources_and_bad_input() -> None:
    big = torch.randint(0, 256, (3, 3, 80, 60), dtype=torch.uint8)
    assert BatchAugment(SMALL)(big).shape == (3, 3, 32, 32)
    assert batch_test_transform(SMALL, big).shape == (3, 3, 32, 32)
    with pytest.raises(FerkitError, match="uint8 batch"):
        BatchAugment(SMALL)(big.float())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_on_cuda_matches_cpu_statistics() -> None:
    device = torch.device("cuda")
    images = torch.from_numpy(gradient_image()).permute(2, 0, 1).unsqueeze(0).repeat(N_DRAWS, 1, 1, 1)
    out = BatchAugment(SMALL).to(device)(images.to(device), torch.Generator(device).manual_seed(0))
    cpu = BatchAugment(SMALL)(images, torch.Generator().manual_seed(0))
    assert out.device.type == "cuda" and out.shape == cpu.shape
    assert abs(out.mean().item() - cpu.mean().item()) < 0.05
    assert abs(out.std().item() - cpu.std().item()) < 0.05


@pytest.mark.realdata
def test_real_fer2013_decodes_as_grey(real_data: Path, tmp_path: Path) -> None:
    samples = load_splits(real_data).train[:64]
    decoded = decode_once(samples, cache_dir=tmp_path)
    assert decoded.images.shape == (64, 1, 48, 48)
    assert BatchAugment(Config())(decoded.images[:8]).shape == (8, 3, 96, 96)

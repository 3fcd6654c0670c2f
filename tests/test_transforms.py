import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ferkit.config import Config
from ferkit.data.transforms import ToRGB, build_test_transform, build_train_transform


def test_train_pipeline_is_the_specification_in_order():
    t = build_train_transform(Config()).transforms
    kinds = [type(x) for x in t]
    assert kinds == [
        ToRGB,
        v2.ToImage,
        v2.RandomResizedCrop,
        v2.RandomHorizontalFlip,
        v2.RandomApply,
        v2.RandomGrayscale,
        v2.RandomRotation,
        v2.ToDtype,
        v2.Normalize,
        v2.RandomErasing,
    ]
    crop, flip, jitter, gray, rot, _, norm, erase = t[2:]
    assert crop.size == (96, 96) and crop.scale == (0.8, 1.0)
    assert flip.p == 0.5
    assert jitter.p == 0.8 and isinstance(jitter.transforms[0], v2.ColorJitter)
    cj = jitter.transforms[0]
    assert cj.brightness == (0.6, 1.4) and cj.contrast == (0.6, 1.4) and cj.saturation == (0.6, 1.4)
    assert cj.hue == (-0.1, 0.1)
    assert gray.p == 0.2
    assert list(rot.degrees) == [-20.0, 20.0]
    assert norm.mean == [0.485, 0.456, 0.406] and norm.std == [0.229, 0.224, 0.225]
    assert erase.p == 0.25


def test_test_pipeline_is_resize_and_normalize():
    t = build_test_transform(Config()).transforms
    assert [type(x) for x in t] == [ToRGB, v2.ToImage, v2.Resize, v2.ToDtype, v2.Normalize]
    assert list(t[2].size) == [96, 96]


def test_grayscale_becomes_three_normalised_channels():
    gray = Image.fromarray(np.full((48, 48), 128, dtype=np.uint8), mode="L")
    out = build_test_transform(Config())(gray)
    assert out.shape == (3, 96, 96) and out.dtype == torch.float32
    expected = (128 / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert torch.allclose(out.mean(dim=(1, 2)), expected, atol=1e-5)


def test_train_transform_is_random_and_shaped():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8), mode="L")
    t = build_train_transform(Config())
    torch.manual_seed(0)
    a, b = t(image), t(image)
    assert a.shape == b.shape == (3, 96, 96)
    assert not torch.equal(a, b)


def test_parameters_follow_the_config():
    cfg = Config(image_size=48, crop_scale=(0.5, 1.0), rotation=10.0, erasing_p=0.0)
    t = build_train_transform(cfg).transforms
    assert t[2].size == (48, 48) and t[2].scale == (0.5, 1.0)
    assert list(t[6].degrees) == [-10.0, 10.0]
    assert t[9].p == 0.0


@pytest.mark.parametrize("mode", ["RGB", "L", "LA", "RGBA", "P", "CMYK", "I;16"])
def test_any_pil_mode_is_accepted(mode):
    image = Image.new(mode, (60, 40))
    assert build_test_transform(Config())(image).shape == (3, 96, 96)


def test_grey_input_shows_colour_photos_grey_and_leaves_grey_images_exactly_as_they_are():
    from ferkit.data.batched import BatchAugment

    rng = np.random.default_rng(0)
    colour = Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
    grey = Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), mode="L")
    cfg = Config(image_size=16, grey_input=True, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x = build_test_transform(cfg)(colour)
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    assert not torch.equal(x, build_test_transform(Config(image_size=16))(colour))
    assert torch.equal(build_test_transform(cfg)(grey), build_test_transform(cfg.updated({"grey_input": False}))(grey))
    batch = torch.from_numpy(np.asarray(colour)).permute(2, 0, 1)[None].contiguous()
    y = BatchAugment(cfg)(batch)
    assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 1], y[0, 2])

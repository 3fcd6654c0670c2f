import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ferkit.config import Config
from ferkit.data.preprocess import ToRGB, build_test_transform
from ferkit.data.transforms import RandomGamma, RandomReframe, build_batch_mix, build_train_transform


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


def torchvision_test_pipeline(cfg: Config) -> v2.Compose:
    """The test pipeline as torchvision writes it, which ferkit's torch-only one must equal."""
    return v2.Compose(
        [ToRGB(cfg.grey_input), v2.ToImage()]
        + ([v2.Lambda(v2.functional.equalize)] if cfg.equalize else [])
        + [
            v2.Resize((cfg.image_size, cfg.image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(cfg.mean), std=list(cfg.std)),
        ]
    )


@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ((48, 48), {}),  # a FER2013 face, enlarged
        ((350, 350, 3), {}),  # a web photo's face, shrunk
        ((61, 97, 3), {"image_size": 48}),  # not square
        ((96, 96, 3), {}),  # already the size
        ((40, 52, 4), {"grey_input": True}),  # RGBA to grey
        ((120, 80, 3), {"equalize": True, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}),
    ],
)
def test_test_pipeline_equals_torchvisions(shape, settings):
    cfg = Config(**settings)
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    ours, theirs = build_test_transform(cfg)(image), torchvision_test_pipeline(cfg)(image)
    assert ours.shape == (3, cfg.image_size, cfg.image_size) and ours.dtype == torch.float32
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        # torchvision resizes uint8 with the same kernel on these CPUs (elsewhere in float, then rounds).
        assert torch.equal(ours, theirs)
    else:
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1.01 / 255 / min(cfg.std))


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
    batch = torch.from_numpy(np.array(colour)).permute(2, 0, 1)[None].contiguous()
    y = BatchAugment(cfg)(batch)
    assert torch.equal(y[0, 0], y[0, 1]) and torch.equal(y[0, 1], y[0, 2])


def test_equalize_shows_a_face_at_one_contrast_however_it_was_exposed(untrained_checkpoint, tmp_path):
    from ferkit.checkpoint import make_checkpoint, read_checkpoint
    from ferkit.inference import Predictor
    from ferkit.model import build_model

    # The same face in four grey levels, dim and bright: only the levels' order and counts survive equalization.
    face = np.random.default_rng(0).integers(0, 4, (20, 20)).astype(np.uint8)
    dim, bright = (Image.fromarray(np.uint8(base + step * face), mode="L") for base, step in ((90, 10), (30, 70)))
    cfg = Config(image_size=16, grey_input=True, equalize=True)
    assert torch.equal(build_test_transform(cfg)(dim), build_test_transform(cfg)(bright))
    plain = cfg.updated({"equalize": False})
    assert not torch.equal(build_test_transform(plain)(dim), build_test_transform(plain)(bright))
    # Training sees what evaluation sees: with no random op left, the train chain is the test chain.
    off = ("flip_p", "jitter_p", "grayscale_p", "rotation", "erasing_p")
    still = cfg.updated({"image_size": 20, "crop_scale": (1.0, 1.0)} | dict.fromkeys(off, 0.0))
    assert torch.equal(build_train_transform(still)(dim), build_test_transform(still)(bright))
    # A checkpoint trained with it equalizes every photo it is given.
    ckpt = read_checkpoint(untrained_checkpoint)
    model_cfg = Config.from_dict(ckpt["config"]).updated({"equalize": True})
    model = build_model(model_cfg, 7)
    model.load_state_dict(ckpt["model"])
    path = tmp_path / "equalized.pth"
    torch.save(make_checkpoint(model.eval(), model_cfg, ckpt["classes"], epoch=1, metrics={}), path)
    predictor = Predictor.from_checkpoint(path)
    assert predictor.config.equalize
    np.testing.assert_allclose(*predictor.classify([dim, bright]), atol=1e-6)
    plain_probs = Predictor.from_checkpoint(untrained_checkpoint).classify([dim, bright])
    assert np.abs(plain_probs[0] - plain_probs[1]).max() > 1e-4


PHOTO_OPS = dict(
    frame_scale=(0.9, 1.1), frame_shift=0.04, gamma=0.3, blur_p=0.2, jpeg_p=0.3, jpeg_quality=(50, 90), noise_p=0.1
)


def test_new_ops_sit_in_the_chain_in_order_with_their_parameters():
    t = build_train_transform(Config(**PHOTO_OPS)).transforms
    kinds = [type(x).__name__ for x in t]
    assert kinds == [
        "ToRGB",
        "ToImage",
        "RandomReframe",
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandomApply",
        "RandomGrayscale",
        "RandomGamma",
        "RandomRotation",
        "RandomApply",
        "RandomApply",
        "ToDtype",
        "RandomApply",
        "Normalize",
        "RandomErasing",
    ]
    reframe, gamma, blur, jpeg, noise = t[2], t[7], t[9], t[10], t[12]
    assert reframe.scale == (0.9, 1.1) and reframe.shift == 0.04 and gamma.strength == 0.3
    assert blur.p == 0.2 and blur.transforms[0].kernel_size == (7, 7) and blur.transforms[0].sigma == [0.1, 1.0]
    assert jpeg.p == 0.3 and jpeg.transforms[0].quality == (50, 90)
    assert noise.p == 0.1 and noise.transforms[0].sigma == 0.03


def test_framing_and_gamma_at_strength_zero_are_the_identity():
    image = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8)
    assert torch.equal(RandomReframe((1.0, 1.0), 0.0)(image), image)
    assert torch.equal(RandomGamma(0.0)(image), image)


def test_framing_moves_the_face_within_its_shift_range():
    # A 1-pixel dot in the middle of the frame: where it lands gives the shift (the scale: tests/test_fastdata.py).
    image = torch.zeros(1, 41, 41, dtype=torch.uint8)
    image[0, 20, 20] = 255
    torch.manual_seed(0)
    centres = []
    for _ in range(200):
        out = RandomReframe((0.7, 1.3), 0.1)(image)[0].float()
        ys, xs = torch.nonzero(out > 0, as_tuple=True)
        centres.append(((xs.float().mean() - 20) / 41, (ys.float().mean() - 20) / 41))
    shifts = torch.tensor(centres)
    # The face moves opposite to the box, by up to scale * shift of the side.
    assert shifts.abs().max() <= 1.3 * 0.1 + 1.5 / 41 and shifts.std() > 0.04


def test_batch_mix_gives_label_probabilities_that_the_smoothed_loss_takes():
    assert build_batch_mix(Config(), 7) is None
    assert isinstance(build_batch_mix(Config(mixup_alpha=0.2), 7), v2.MixUp)
    assert isinstance(build_batch_mix(Config(cutmix_alpha=1.0), 7), v2.CutMix)
    both = build_batch_mix(Config(mixup_alpha=0.2, cutmix_alpha=1.0), 7)
    assert isinstance(both, v2.RandomChoice)
    images, labels = torch.rand(8, 3, 16, 16), torch.arange(8) % 7
    mixed, targets = both(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 7)
    assert torch.allclose(targets.sum(dim=1), torch.ones(8)) and (targets > 0).sum(dim=1).max() <= 2
    # Label probabilities that are one-hot give the loss of the class indices, smoothing included.
    logits = torch.randn(8, 7)
    one_hot = torch.nn.functional.one_hot(labels, 7).float()
    soft = torch.nn.functional.cross_entropy(logits, one_hot, label_smoothing=0.1)
    assert torch.allclose(soft, torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))

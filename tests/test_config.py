import json
import math
import re
from dataclasses import fields

import pytest
import torch

from ferkit.checkpoint import load_model
from ferkit.cli import build_parser
from ferkit.config import GROUPS, PRESETS, Config, config_from_args, resumed_config
from ferkit.errors import FerkitError
from ferkit.model import build_model, inference_flops, resnet18, training_flops
from ferkit.training.optim import build_optimizer, build_scheduler, sharpness_aware_gradient


def test_defaults_are_the_specification():
    cfg = Config()
    assert cfg.image_size == 96 and cfg.epochs == 100 and cfg.batch_size == 32 and cfg.workers == 4
    assert cfg.label_smoothing == 0.1 and cfg.protocol == "spec" and cfg.schedule_unit == "epoch"
    assert (cfg.flip_p, cfg.jitter_p, cfg.grayscale_p, cfg.rotation, cfg.erasing_p) == (0.5, 0.8, 0.2, 20.0, 0.25)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert (cfg.arch, cfg.width, cfg.lr, cfg.warmup_epochs, cfg.ema_decay) == ("resnet18", 64, 1e-3, 0.0, 0.0)
    assert Config().updated(PRESETS["spec"]) == cfg


def parse(*argv):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_layers_preset_then_file_then_flags(tmp_path):
    assert parse().image_size == 96
    assert parse("--preset", "quick").image_size == 48
    f = tmp_path / "c.toml"
    f.write_text("image_size = 64\nepochs = 7\ncrop_scale = [0.5, 1.0]\n")
    cfg = parse("--preset", "quick", "--config", str(f), "--epochs", "3")
    assert (cfg.image_size, cfg.epochs, cfg.crop_scale, cfg.protocol) == (64, 3, (0.5, 1.0), "clean")
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"lr": 0.01}))
    assert parse("--config", str(j)).lr == 0.01


def test_bad_config_values_are_clear_errors(tmp_path):
    with pytest.raises(FerkitError, match="unknown config keys"):
        Config().updated({"epoch": 3})
    with pytest.raises(FerkitError, match="must be one of"):
        Config().updated({"protocol": "other"})
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3")
    with pytest.raises(FerkitError, match="not valid TOML"):
        parse("--config", str(bad))


def test_config_round_trips_through_a_dict():
    cfg = Config(image_size=48, crop_scale=(0.7, 1.0))
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("rule,expected", [("none", 1e-3), ("sqrt", 2e-3), ("linear", 4e-3)])
def test_lr_scaling_rules(rule, expected):
    assert Config(batch_size=128, lr_scaling=rule).effective_lr() == pytest.approx(expected)


def test_lr_after_k_epochs_follows_the_cosine_formula():
    cfg = Config(epochs=10, lr=1e-3, min_lr=1e-6)
    optimizer = build_optimizer(resnet18(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=50)
    assert isinstance(optimizer, torch.optim.AdamW)
    for k in range(1, 11):
        optimizer.step()
        scheduler.step()
        expected = cfg.min_lr + (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * k / cfg.epochs)) / 2
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-9)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(cfg.min_lr)


def test_warmup_rises_linearly_then_the_cosine_spans_the_rest():
    cfg = Config(epochs=4, lr=2e-3, lr_scaling="none", min_lr=0.0, warmup_epochs=1, schedule_unit="step")
    optimizer = build_optimizer(resnet18(), cfg)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(2e-3 / 25)
    assert lrs[5] == pytest.approx(2e-3 / 25 + (2e-3 - 2e-3 / 25) * 0.5)
    assert max(lrs) == pytest.approx(2e-3) and lrs[10] == pytest.approx(2e-3)
    assert lrs[25] == pytest.approx(2e-3 * (1 + math.cos(math.pi * 15 / 30)) / 2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def test_weight_decay_skips_norms_and_biases():
    optimizer = build_optimizer(resnet18(), Config(weight_decay=0.05))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.05 and all(p.ndim > 1 for p in decayed["params"])
    assert plain["weight_decay"] == 0.0 and all(p.ndim == 1 for p in plain["params"])


def test_sgd_takes_nesterov_steps_with_its_weight_decay_as_an_l2_term():
    layer = torch.nn.Linear(1, 1, bias=False)
    layer.weight.data.fill_(1.0)
    cfg = Config(optimizer="sgd", momentum=0.9, lr=0.1, lr_scaling="none", weight_decay=0.5)
    optimizer = build_optimizer(layer, cfg)
    assert isinstance(optimizer, torch.optim.SGD)
    w, velocity = 1.0, 0.0
    for _ in range(3):
        optimizer.zero_grad()
        layer(torch.ones(1, 1)).sum().backward()  # gradient 1 whatever the weight
        g = 1.0 + 0.5 * w
        velocity = 0.9 * velocity + g
        w -= 0.1 * (g + 0.9 * velocity)
        optimizer.step()
        assert layer.weight.item() == pytest.approx(w, rel=1e-6)


def test_sam_takes_the_gradient_at_the_weights_moved_rho_up_the_gradient_and_puts_them_back():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    x, y = torch.randn(8, 3), torch.randn(8, 1)

    def backward() -> None:
        torch.nn.functional.mse_loss(model(x), y).backward()

    weights = [p.detach().clone() for p in model.parameters()]
    backward()
    after_first_pass = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "batches" in k}
    grads = [p.grad.clone() for p in model.parameters()]
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    # The same network at w + rho g / |g|, built by hand: its gradient is what SAM must leave in .grad.
    moved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    moved.load_state_dict(model.state_dict())
    with torch.no_grad():
        for p, w, g in zip(moved.parameters(), weights, grads):
            p.copy_(w + 0.05 * g / norm)
    torch.nn.functional.mse_loss(moved(x), y).backward()

    sharpness_aware_gradient(model, 0.05, backward)
    for p, w, m in zip(model.parameters(), weights, moved.parameters()):
        assert torch.equal(p, w)  # back exactly where the step started
        assert torch.allclose(p.grad, m.grad, atol=1e-6) and not torch.allclose(m.grad, torch.zeros_like(m.grad))
    assert not all(torch.allclose(p.grad, g) for p, g in zip(model.parameters(), grads))
    # BatchNorm's running statistics keep the first pass's update only.
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in after_first_pass.items())


@pytest.mark.parametrize("preset, budget", [("quick", 0.5), ("bundled", 2.0)])
def test_cpu_presets_train_the_stride_2_network_at_48_within_their_compute_budget(preset, budget):
    cfg = Config().updated(PRESETS[preset])
    assert (cfg.arch, cfg.image_size, cfg.protocol, cfg.schedule_unit, cfg.data_pipeline) == (
        "resnet18s2",
        48,
        "clean",
        "step",
        "batched",
    )
    assert cfg.batch_size == 64 and cfg.warmup_epochs > 0
    # FER2013's 28,709 training images in full batches of 64, every epoch, and a teacher's labelling of them and
    # their mirrors once.
    images = 28709 // cfg.batch_size * cfg.batch_size * cfg.epochs
    pflop = training_flops(build_model(cfg, 7), cfg.image_size) * images / 1e15
    for teacher in cfg.distill_from:
        pflop += 2 * 28709 * inference_flops(load_model(teacher).model, 48) / 1e15
    assert budget * 0.9 < pflop <= budget
    # The specification's values stay where the preset says nothing.
    assert (cfg.crop_scale, cfg.rotation) == ((0.8, 1.0), 20.0)


def test_the_quick_preset_is_taught_by_the_bundled_model_with_sgd():
    quick, bundled = (Config().updated(PRESETS[name]) for name in ("quick", "bundled"))
    assert quick.distill_from == ("fer2013_resnet18",) and quick.distill_weight == 0.5
    assert (quick.optimizer, quick.lr, quick.weight_decay, quick.label_smoothing) == ("sgd", 0.05, 5e-4, 0.0)
    # The bundled preset, its teacher's, is taught by nobody and keeps AdamW and the specification's loss.
    assert bundled.distill_from == () and (bundled.optimizer, bundled.lr) == ("adamw", 2e-3)
    assert (bundled.label_smoothing, bundled.weight_decay) == (0.1, 0.05)


def test_a_resumed_run_may_change_speed_and_epochs_and_nothing_else():
    saved = Config(epochs=10, lr=2e-3, workers=4)
    cfg, changes = resumed_config(saved, Config(epochs=12, lr=2e-3, workers=2, out="elsewhere"), 7, "runs/x")
    assert cfg.epochs == 12 and cfg.workers == 2 and changes == ["--epochs 12 (was 10)", "--workers 2 (was 4)"]
    with pytest.raises(
        FerkitError,
        match=r"^cannot resume runs/x with --lr 0.0005 --sync-bn --seed 1: the run was "
        r"trained with lr 0.002, sync_bn False, seed 0; .* to change them$",
    ):
        resumed_config(saved, Config(epochs=10, lr=5e-4, seed=1, sync_bn=True, tensorboard=False), 7, "runs/x")
    with pytest.raises(FerkitError, match="with --crop-scale 0.5 1.0: the run was trained with crop_scale 0.8 1.0;"):
        resumed_config(saved, Config(epochs=10, lr=2e-3, crop_scale=(0.5, 1.0)), 7, "runs/x")
    with pytest.raises(FerkitError, match="--epochs 6: the run is at epoch 7 already"):
        resumed_config(saved, Config(epochs=6, lr=2e-3), 7, "runs/x")


def test_train_help_groups_the_flags_by_topic(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    sections: dict[str, str] = {}
    for line in capsys.readouterr().out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            heading = line[:-1]
            sections[heading] = ""
        elif sections:
            sections[heading] += line + "\n"
    assert [h for h in sections if h in GROUPS] == list(GROUPS)
    for f in fields(Config):
        assert re.search(f"^  --{f.name.replace('_', '-')}[ ,]", sections[f.metadata["group"]], re.M), f.name
    assert "--resume" in sections["run"] and "--preset" in sections["run"] and "--nproc" in sections["speed"]


def test_photo_presets_are_their_base_preset_plus_the_photo_ops():
    for name in ("quick", "bundled"):
        photos = Config().updated(PRESETS[f"{name}-photos"])
        base = Config().updated(PRESETS[name])
        assert photos.frame_scale == (0.85, 1.15) and photos.frame_shift == 0.05 and photos.blur_p > 0
        changed = {f.name for f in fields(Config) if getattr(photos, f.name) != getattr(base, f.name)}
        assert changed == {"frame_scale", "frame_shift", "gamma", "blur_p", "noise_p"}
    # Every new op is off by default, so the specification's chain is unchanged.
    spec = Config()
    assert spec.frame_scale == (1.0, 1.0) and spec.frame_shift == spec.gamma == 0
    assert spec.blur_p == spec.jpeg_p == spec.noise_p == spec.mixup_alpha == spec.cutmix_alpha == 0


@pytest.mark.parametrize(
    "values, message",
    [
        ({"frame_scale": (1.2, 0.9)}, "--frame-scale must be MIN MAX with MIN <= MAX (got 1.2 0.9)"),
        ({"frame_scale": (0.4, 1.0)}, "--frame-scale must be in [0.5, 2] (got 0.4 1.0)"),
        ({"frame_shift": 0.6}, "--frame-shift must be in [0, 0.5] (got 0.6)"),
        ({"blur_sigma": (0.0, 1.0)}, "--blur-sigma must be in (0, 3] (got 0.0 1.0)"),
        ({"jpeg_quality": (90, 40)}, "--jpeg-quality must be MIN MAX with MIN <= MAX (got 90.0 40.0)"),
        ({"noise_std": -0.1}, "--noise-std must be in [0, 1] (got -0.1)"),
        ({"mixup_alpha": -1.0}, "--mixup-alpha must be >= 0 (got -1.0)"),
        (
            {"image_size": 8, "blur_p": 0.5, "blur_sigma": (0.1, 3.0)},
            "--blur-sigma up to 3.0 needs --image-size above 9 (got 8); lower the sigma or raise the size",
        ),
    ],
)
def test_new_augmentation_values_are_checked(values, message):
    with pytest.raises(FerkitError, match=f"^{re.escape(message)}$"):
        Config().updated(values)


def test_teacher_checkpoints_are_a_list_of_paths_everywhere(tmp_path):
    cfg = parse("--distill-from", "a/best.pth", "b.safetensors", "--distill-weight", "0.7")
    assert cfg.distill_from == ("a/best.pth", "b.safetensors") and cfg.distill_weight == 0.7
    assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    f = tmp_path / "c.toml"
    f.write_text('distill_from = "one.pth"\n')
    assert parse("--config", str(f)).distill_from == ("one.pth",)
    assert parse().distill_from == ()
    with pytest.raises(FerkitError, match=r"--distill-from must be a string \(got 3\)"):
        Config(distill_from=(3,))
    with pytest.raises(FerkitError, match=r"--distill-weight must be in \[0, 1\]"):
        Config(distill_weight=1.5)
    assert parse("--distill-temperature", "2").distill_temperature == 2.0 and parse().distill_temperature == 1.0
    with pytest.raises(FerkitError, match=r"--distill-temperature must be > 0 \(got 0.0\)"):
        Config(distill_temperature=0.0)
    # Other teachers would change the targets part-way through the run.
    with pytest.raises(FerkitError, match="with --distill-from c.pth: the run was trained with distill_from a.pth"):
        resumed_config(Config(distill_from=("a.pth",)), Config(distill_from=("c.pth",)), 1, "runs/x")


def test_a_folder_list_flag_given_no_folder_turns_it_off():
    assert parse("--watch", "a", "b").watch == ("a", "b")
    assert parse("--watch").watch == () and parse("--distill-from").distill_from == ()
    # On a resume the saved run is the base: the empty flag is what changes it.
    saved = Config(watch=("a",))
    args = build_parser().parse_args(["train", "--watch"])
    assert config_from_args(args, base=saved).watch == () and config_from_args(
        build_parser().parse_args(["train"]), base=saved
    ).watch == ("a",)

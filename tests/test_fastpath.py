"""The fast training path: the batched data pipeline, channels-last layout, torch.compile and fused AdamW."""

import functools
import os

import conftest
import pytest
import torch
from conftest import sigint_after_optimizer_steps, weights

from ferkit.checkpoint import load_model, read_checkpoint
from ferkit.cli import build_parser
from ferkit.config import Config, config_from_args
from ferkit.data.datasets import load_splits
from ferkit.errors import FerkitError
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.model import resnet18
from ferkit.runtime import Speed, cpu_has_native_bf16, resolve_channels_last, resolve_data_pipeline
from ferkit.training.feed import DecodedBatches
from ferkit.training.loop import TrainingInterrupted, train
from ferkit.training.optim import build_optimizer


def tiny(image_folder, tmp_path, name, **kw) -> Config:
    # fp32 pinned: these tests compare numbers, which bf16 (auto on CPUs with native bf16) would round.
    fast = dict(epochs=2, data_pipeline="batched", cache_dir=str(tmp_path / "cache"), precision="fp32")
    return conftest.tiny(image_folder, tmp_path / name, **{**fast, **kw})


def test_flags_and_what_auto_picks():
    cfg = config_from_args(
        build_parser().parse_args(
            ["train", "--data-pipeline", "batched", "--channels-last", "on", "--compile", "--cache-dir", "/tmp/c"]
        )
    )
    assert (cfg.data_pipeline, cfg.channels_last, cfg.compile, cfg.cache_dir) == ("batched", "on", True, "/tmp/c")
    default = Config()
    assert (default.data_pipeline, default.channels_last, default.compile, default.cache_dir) == (
        "auto",
        "auto",
        False,
        None,
    )
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_data_pipeline("auto", cpu) == "workers" and resolve_data_pipeline("auto", cuda) == "batched"
    assert resolve_data_pipeline("batched", cpu) == "batched"
    # channels_last: on for CUDA and for bf16 on CPUs (faster with native bf16), off for fp32 on CPUs.
    assert resolve_channels_last("auto", cuda, "fp32") and resolve_channels_last("auto", cpu, "bf16")
    assert not resolve_channels_last("auto", cpu, "fp32")
    assert resolve_channels_last("on", cpu, "fp32") and not resolve_channels_last("off", cuda, "bf16")


def test_adamw_is_fused_only_on_cuda():
    assert build_optimizer(resnet18(), Config()).defaults["fused"] is None  # PyTorch's own choice on the CPU
    if torch.cuda.is_available():
        assert build_optimizer(resnet18().cuda(), Config()).defaults["fused"] is True


def test_batched_batches_follow_the_sampler_and_replay_from_mid_epoch(image_folder, tmp_path):
    cfg = tiny(image_folder, tmp_path, "unused")
    speed = Speed(torch.device("cpu"), "fp32", "batched", channels_last=False, workers=0)
    feed = DecodedBatches(load_splits(cfg.data).train, cfg, speed, 4)
    feed.set_epoch(1)
    whole = list(feed)
    order = list(feed.sampler)
    assert len(whole) == len(order) // 4 == 7
    assert torch.cat([targets for _, targets, _ in whole]).tolist() == feed.labels[order].tolist()
    assert whole[0][0].shape == (4, 3, 16, 16) and whole[0][0].dtype == torch.float32
    feed.set_epoch(1, start_step=3)  # a run resumed after 3 steps draws the same augmentation for the rest
    rest = list(feed)
    assert len(rest) == 4 and all(torch.equal(a[0], b[0]) for a, b in zip(whole[3:], rest))
    feed.set_epoch(2)
    assert not torch.equal(next(iter(feed))[0], whole[0][0])


def test_batched_run_writes_the_same_run_folder(image_folder, tmp_path):
    workers = train(tiny(image_folder, tmp_path, "workers", data_pipeline="auto", protocol="clean"))
    batched = train(tiny(image_folder, tmp_path, "batched", protocol="clean"))
    assert sorted(p.name for p in (tmp_path / "workers").iterdir()) == sorted(
        p.name for p in (tmp_path / "batched").iterdir()
    )
    assert batched["images"] == workers["images"] == 14
    log = (tmp_path / "batched" / "train.log").read_text()
    assert "speed: batched data pipeline (28 images decoded once, written to the cache" in log
    assert "fp32 training precision, fp32 evaluation; contiguous memory layout; torch.compile off" in log
    assert "speed: workers data pipeline" in (tmp_path / "workers" / "train.log").read_text()
    assert len(list((tmp_path / "cache").glob("decoded-*.pt"))) == 1


def test_batched_run_resumes_exactly_after_sigint(image_folder, tmp_path, monkeypatch):
    train(tiny(image_folder, tmp_path, "full"))
    real_step = sigint_after_optimizer_steps(monkeypatch, 9)  # 7 batches per epoch: epoch 2, second batch
    with pytest.raises(TrainingInterrupted, match="--resume"):
        train(tiny(image_folder, tmp_path, "cut"))
    state = read_checkpoint(tmp_path / "cut" / "last.pth")["state"]
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    train(tiny(image_folder, tmp_path, "cut"), resume=True)
    full, resumed = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
    assert "read from the cache" in (tmp_path / "cut" / "train.log").read_text()


def test_batched_run_stops_at_or_skips_unreadable_images(image_folder, tmp_path):
    (image_folder / "train" / "fear" / "Training_zz_bad.png").write_bytes(b"garbage")
    with pytest.raises(FerkitError, match="cannot read image .*Training_zz_bad.png"):
        train(tiny(image_folder, tmp_path, "stop", epochs=1))
    train(tiny(image_folder, tmp_path, "skip", epochs=1, bad_images="skip"))
    state = read_checkpoint(tmp_path / "skip" / "last.pth")["state"]
    assert [os.path.basename(p) for p in state["skipped"]] == ["Training_zz_bad.png"]
    assert "Training_zz_bad.png" in (tmp_path / "skip" / "train.log").read_text()


def test_channels_last_trains_and_its_checkpoints_load_in_a_plain_model(image_folder, tmp_path):
    plain = train(tiny(image_folder, tmp_path, "plain", epochs=1, channels_last="off"))
    last = train(tiny(image_folder, tmp_path, "last", epochs=1, channels_last="on"))
    assert "channels_last memory layout" in (tmp_path / "last" / "train.log").read_text()
    # The same training in another memory layout: only the convolutions' summation order differs.
    history = [read_checkpoint(tmp_path / run / "last.pth")["state"]["history"][0] for run in ("plain", "last")]
    assert history[0]["train_loss"] == pytest.approx(history[1]["train_loss"], rel=1e-4)
    assert last["loss"] == pytest.approx(plain["loss"], rel=1e-3)
    model = load_model(tmp_path / "last" / "best.pth").model
    assert all(p.is_contiguous() for p in model.parameters())
    assert torch.isfinite(model(torch.randn(2, 3, 16, 16))).all()


@pytest.mark.slow  # torch.compile compiles for seconds
def test_compile_trains_and_saves_plain_weights(image_folder, tmp_path, monkeypatch):
    # Inductor spends over a minute compiling even this model on a 2-core CPU; the eager backend runs the same
    # wiring (compiled module in training, plain module saved and evaluated) in seconds.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    train(tiny(image_folder, tmp_path, "eager", epochs=1))
    train(tiny(image_folder, tmp_path, "compiled", epochs=1, compile=True))
    assert "torch.compile on" in (tmp_path / "compiled" / "train.log").read_text()
    compiled, eager = weights(tmp_path / "compiled"), weights(tmp_path / "eager")
    assert compiled.keys() == eager.keys() and not any(k.startswith("_orig_mod.") for k in compiled)
    assert all(torch.allclose(compiled[k].float(), eager[k].float(), atol=1e-6) for k in eager)
    load_model(tmp_path / "compiled" / "best.pth")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
def test_cuda_defaults_take_the_fast_path(image_folder, tmp_path):
    train(tiny(image_folder, tmp_path, "cuda", data_pipeline="auto", device="cuda"))
    log = (tmp_path / "cuda" / "train.log").read_text()
    assert "speed: batched data pipeline" in log and "on cuda" in log and "channels_last memory layout" in log
    load_model(tmp_path / "cuda" / "best.pth")


@pytest.mark.skipif(not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AMX or AVX-512 BF16)")
def test_bf16_trains_where_the_cpu_has_it_and_figures_stay_fp32(image_folder, tmp_path):
    report = train(tiny(image_folder, tmp_path, "bf16", epochs=1, precision="auto", protocol="clean"))
    log = (tmp_path / "bf16" / "train.log").read_text()
    assert "bf16 training precision, fp32 evaluation; channels_last memory layout" in log
    assert report["train_precision"] == "bf16" and report["precision"] == "fp32"
    # The report is an fp32 measurement: evaluating best.pth again, anywhere, gives the same figure.
    again = evaluate_checkpoint(tmp_path / "bf16" / "best.pth", split="report", workers=0, device="cpu")
    assert again["precision"] == "fp32" and again["accuracy"] == report["accuracy"]
    assert again["loss"] == pytest.approx(report["loss"], rel=1e-6)

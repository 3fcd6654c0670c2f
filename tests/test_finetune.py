"""`--init-from`: a run that starts from a trained network's weights, its network and preprocessing taken from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_image_folder, make_photo_folder, tiny

from ferkit.checkpoint import atomic_save, read_checkpoint
from ferkit.cli import main
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.errors import FerkitError
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.model import build_model
from ferkit.training.finetune import initialise_from
from ferkit.training.loop import train

THREE = ["happy", "neutral", "surprise"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run on the seven classes: its best.pth is the network runs start from."""
    root = tmp_path_factory.mktemp("trained")
    train(tiny(make_image_folder(root / "fer"), root / "run", epochs=1))
    return root / "run" / "best.pth"


def test_a_network_of_the_same_classes_starts_with_every_weight_of_the_checkpoint(trained):
    cfg = Config.from_dict({**read_checkpoint(trained)["config"], "init_from": str(trained)})
    model = build_model(cfg, len(CLASSES))
    initialise_from(model, cfg, CLASSES)
    saved = read_checkpoint(trained)["model"]
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k], saved[k]) for k in saved)  # BatchNorm statistics too


def test_fewer_classes_keep_their_own_rows_of_the_classifier_by_name(trained):
    cfg = Config.from_dict({**read_checkpoint(trained)["config"], "init_from": str(trained)})
    classes = ("Happy", "Neutral", "Surprise")
    model = build_model(cfg, len(classes))
    initialise_from(model, cfg, classes)
    saved, state = read_checkpoint(trained)["model"], model.state_dict()
    for part in ("weight", "bias"):
        assert torch.equal(state[f"head.4.{part}"], saved[f"head.4.{part}"][[3, 4, 6]])
    assert torch.equal(state["head.0.weight"], saved["head.0.weight"])


def test_classes_the_checkpoint_lacks_start_new_and_the_log_says_which(tmp_path):
    # A network trained on three classes, fine-tuned on all seven: four rows are new.
    start = tmp_path / "three"
    train(tiny(make_image_folder(tmp_path / "fer3", folder_names=THREE), start, epochs=1))
    out = tmp_path / "seven"
    train(tiny(make_image_folder(tmp_path / "fer7"), out, epochs=1, init_from=str(start / "best.pth")))
    assert read_checkpoint(out / "best.pth")["classes"] == list(CLASSES)
    log = (out / "train.log").read_text()
    assert "its classifier kept for Happy, Neutral, Surprise and new for Angry, Disgust, Fear, Sad" in log
    assert f"init: weights of {start / 'best.pth'} ({start / 'best.pth'}, sha256 " in log
    assert json.loads((out / "config.json").read_text())["init_from"] == str(start / "best.pth")


def test_train_takes_the_network_and_preprocessing_from_the_checkpoint(trained, tmp_path):
    data, out = trained.parent.parent / "fer", tmp_path / "tuned"
    # No --width, --image-size or --grey-input: the checkpoint's 8 and 16 (the defaults are 64 and 96).
    argv = ["train", "--data", str(data), "--init-from", str(trained), "--epochs", "1", "--batch-size", "4"]
    argv += ["--workers", "0", "--no-tensorboard"]
    assert main([*argv, "--out", str(out), "--lr", "1e-4"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["arch"], cfg["width"], cfg["image_size"], cfg["lr"]) == ("resnet18", 8, 16, 1e-4)
    assert "reads faces otherwise" not in (out / "train.log").read_text()
    # A flag may still change the preprocessing; the log says the run reads faces otherwise than the network learnt.
    assert main([*argv, "--out", str(tmp_path / "bigger"), "--image-size", "24"]) == 0
    log = (tmp_path / "bigger" / "train.log").read_text()
    assert "checkpoint learnt to: --image-size 24 (was --image-size 16)" in log


def test_the_start_is_measured_before_the_first_epoch_as_epochs_are(trained, tmp_path):
    data = trained.parent.parent / "fer"
    watch = make_photo_folder(tmp_path / "photos", {"happy": 3, "sad": 3})
    out = tmp_path / "run"
    train(tiny(data, out, epochs=1, init_from=str(trained), watch=(str(watch),), watch_min_support=1))
    report = evaluate_checkpoint(trained, str(data), split="select", workers=0)
    log = (out / "train.log").read_text()
    line = next(line for line in log.splitlines() if "init: before training" in line)
    assert f"init: before training, test acc {report['accuracy']:.4f} F1 {report['macro_f1']:.4f}" in line
    assert "  photos acc " in line and "  photos macro recall " in line
    # A run started from nothing has no start to measure.
    train(tiny(data, tmp_path / "fresh", epochs=1))
    assert "before training" not in (tmp_path / "fresh" / "train.log").read_text()


def test_a_network_of_another_shape_is_refused_naming_the_flags_that_build_it(trained, tmp_path, capsys):
    data = trained.parent.parent / "fer"
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "wide"), "--init-from", str(trained)]
    assert main([*argv, "--width", "16", "--workers", "0", "--no-tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (
        f"--init-from {trained} is a network of --arch resnet18 --width 8 --hidden 256; this run builds --arch "
        "resnet18 --width 16 --hidden 256: give --arch resnet18 --width 8 --hidden 256" in err
    )
    assert not (tmp_path / "wide" / "last.pth").exists()


def test_an_ensemble_is_refused_with_the_command_that_takes_one_network(tmp_path, capsys):
    # The bundled model averages two networks.
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--init-from", "fer2013_resnet18"]) == 2
    err = capsys.readouterr().err
    assert "--init-from fer2013_resnet18 averages 2 networks and a run trains one" in err
    assert "`ferkit ensemble fer2013_resnet18 --member 0 --out network.safetensors`" in err


def test_an_onnx_export_is_refused_as_untrainable(tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--init-from", "fer2013_resnet18.int8"]) == 2
    assert "--init-from fer2013_resnet18.int8 is an ONNX export" in capsys.readouterr().err


def test_a_missing_checkpoint_is_one_line_naming_it(tmp_path, capsys):
    assert main(["train", "--init-from", str(tmp_path / "gone.pth"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "gone.pth" in err


def test_best_pth_records_the_start_s_training_compute_with_the_run_s(trained, tmp_path):
    start = read_checkpoint(trained)["pflop"]
    assert start > 0  # what the start's own run spent, in its best.pth
    out = tmp_path / "run"
    report = train(tiny(trained.parent.parent / "fer", out, epochs=1, init_from=str(trained)))
    assert report["start_pflop"] == start and report["pflop"] > 0
    assert read_checkpoint(out / "best.pth")["pflop"] == pytest.approx(start + report["pflop"])
    log = (out / "train.log").read_text()
    assert f"its training, {start:.3f} PFLOP, is added to this run's in best.pth's record" in log


def test_a_start_that_does_not_record_its_compute_leaves_the_run_s_record_without_one(trained, tmp_path):
    unrecorded = read_checkpoint(trained)
    del unrecorded["pflop"]  # as files written before checkpoints recorded it (the bundled model's networks)
    atomic_save(unrecorded, tmp_path / "start.pth")
    out = tmp_path / "run"
    report = train(tiny(trained.parent.parent / "fer", out, epochs=1, init_from=str(tmp_path / "start.pth")))
    assert report["start_pflop"] is None and report["pflop"] > 0  # the run's own is known all the same
    assert "pflop" not in read_checkpoint(out / "best.pth")  # unknown, not the run's own alone
    log = (out / "train.log").read_text()
    assert "it does not record its training compute, so best.pth will record none" in log
    assert "the start's file does not record its training compute, so best.pth records none" in log


def test_a_resumed_fine_tuning_run_continues_from_its_own_weights(trained, tmp_path):
    cfg = tiny(trained.parent.parent / "fer", tmp_path / "run", epochs=1, init_from=str(trained))
    train(cfg)
    first = read_checkpoint(tmp_path / "run" / "last.pth")["model"]
    trained_copy = trained.read_bytes()
    trained.unlink()  # the start is no longer needed: a resumed run starts from its own last.pth
    try:
        train(Config.from_dict({**cfg.to_dict(), "epochs": 2}), resume=True)
    finally:
        trained.write_bytes(trained_copy)
    second = read_checkpoint(tmp_path / "run" / "last.pth")["model"]
    assert not torch.equal(first["head.4.weight"], second["head.4.weight"])
    # The start's compute, read when the run began, is still counted after a resume that cannot read it again.
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    best = read_checkpoint(tmp_path / "run" / "best.pth")
    assert best["pflop"] == pytest.approx(read_checkpoint(trained)["pflop"] + report["pflop"])


def test_init_from_is_a_config_value_like_any_other():
    with pytest.raises(FerkitError, match="--init-from must be a string"):
        Config(init_from=3)

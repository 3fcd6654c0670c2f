"""`ferkit info`: what a model file records, for a person or as JSON (the server's /model answers the same)."""

from __future__ import annotations

import json

import pytest
import torch

from ferkit.bundled import BUNDLED
from ferkit.checkpoint import atomic_save, make_checkpoint, read_checkpoint
from ferkit.cli import main
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.model import build_model


def test_a_trained_checkpoint_is_described_from_its_own_record(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = Config().updated({"image_size": 24, "width": 8, "grey_input": True})
    record = {"epoch": 7, "metrics": {"accuracy": 0.6543, "macro_f1": 0.512}, "select_split": "PublicTest"}
    path = tmp_path / "run" / "best.pth"
    path.parent.mkdir()
    atomic_save(make_checkpoint(build_model(cfg, 7), cfg, CLASSES, pflop=0.125, temperature=1.25, **record), path)
    assert main(["info", str(tmp_path / "run")]) == 0  # a run folder stands for its best.pth
    assert capsys.readouterr().out.splitlines() == [
        "best.pth: resnet18 width 8",
        "  classes: Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise",
        "  reads faces at 24x24 grey, mean 0.485/0.456/0.406, std 0.229/0.224/0.225",
        "  temperature 1.250 (fitted by ferkit calibrate); predict reads it for --prior model",
        "  trained: epoch 7, PublicTest accuracy 65.43%, macro F1 0.512, 0.125 PFLOP",
    ]
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["epoch"], info["metrics"], info["pflop"], info["temperature"]) == (7, record["metrics"], 0.125, 1.25)
    assert Config.from_dict(info["config"]) == cfg and info["members"] == []
    # A fine-tuned run's epochs count from the network it started from, which its line names.
    tuned = tmp_path / "tuned.pth"
    cfg = cfg.updated({"init_from": str(tmp_path / "teachers" / "start.safetensors")})
    atomic_save(make_checkpoint(build_model(cfg, 7), cfg, CLASSES, **record), tuned)
    assert main(["info", str(tuned)]) == 0
    assert (
        "  trained: epoch 7 after starting from start.safetensors, PublicTest accuracy 65.43%, macro F1 0.512, "
        "training PFLOP not recorded" in capsys.readouterr().out.splitlines()
    )


def test_the_bundled_model_names_its_networks_and_their_training_compute(capsys):
    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    ckpt = read_checkpoint(BUNDLED)
    members = ckpt["members"]
    # The student counts three times the teacher (MODEL_CARD.md): each network's share is said beside it.
    assert [m["weight"] for m in members] == [0.25, 0.75]
    assert lines[0] == "fer2013_resnet18.safetensors: the weighted average of 2 networks: " + ", ".join(
        f"{m['config']['arch']} width {m['config']['width']} (weight {m['weight']:.3g})" for m in members
    )
    for i, m in enumerate(members):
        line = next(line for line in lines if line.startswith(f"  network {i} ({m['source']}): "))
        assert f"epoch {m['epoch']}" in line and f"PublicTest accuracy {m['metrics']['accuracy']:.2%}" in line
        assert line.endswith(f", {m['pflop']:.3f} PFLOP")
    # The file's compute is its networks' together, inside issue 20's budget of 4 PFLOP for the bundled model.
    assert ckpt["pflop"] == pytest.approx(sum(m["pflop"] for m in members)) and 3.9 < ckpt["pflop"] <= 4.0
    # The average's own figure is the one ferkit calibrate measured on the selection split; it has no epoch.
    own = ckpt["metrics"]
    figure = f"PublicTest accuracy {own['accuracy']:.2%}, macro F1 {own['macro_f1']:.3f}"
    assert f"  trained: {figure}, {ckpt['pflop']:.3f} PFLOP" in lines
    assert "predict reads it for --prior photos" in lines[3]  # it records its training mix
    # The int8 export carries the same record in its metadata.
    assert main(["info", "fer2013_resnet18.int8", "--json"]) == 0
    onnx = json.loads(capsys.readouterr().out)
    assert [(m["source"], m["epoch"], m["pflop"]) for m in onnx["members"]] == [
        (m["source"], m["epoch"], m["pflop"]) for m in members
    ]
    assert onnx["pflop"] == ckpt["pflop"]


def test_a_file_that_is_not_a_model_is_one_line(tmp_path, capsys):
    (tmp_path / "notes.pth").write_bytes(b"not a checkpoint")
    assert main(["info", str(tmp_path / "notes.pth")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.pth" in err

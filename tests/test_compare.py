"""Two models read on the same images (`ferkit evaluate A --against B`): the paired difference and its interval."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import make_photo_folder

from ferkit.checkpoint import atomic_save, make_checkpoint
from ferkit.cli import main
from ferkit.config import Config
from ferkit.data.datasets import CLASSES
from ferkit.evaluation.metrics import paired_difference
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.model import build_model


def test_the_difference_of_a_hand_made_case_and_its_interval():
    labels = np.repeat(np.arange(2), 500)  # two classes of 500 images
    predicted = labels.copy()  # right on every image
    other = labels.copy()
    other[:100] = 1  # wrong on 100 images of class 0
    d = paired_difference(labels, predicted, other, [0, 1])
    assert d["accuracy"] == pytest.approx(0.1) and d["macro_recall"] == pytest.approx(0.1)
    assert d["read_differently"] == pytest.approx(0.1)
    # The interval is around the difference and away from zero; it is about the binomial spread of 100 in 1,000.
    low, high = d["accuracy_95"]
    assert 0.075 < low < 0.1 < high < 0.125
    # A model against itself: nothing differs on any draw.
    same = paired_difference(labels, other, other, [0, 1])
    assert (same["accuracy"], same["accuracy_95"], same["macro_recall_95"]) == (0.0, [0.0, 0.0], [0.0, 0.0])
    # Macro recall averages the classes asked for: class 1 alone does not differ.
    assert paired_difference(labels, predicted, other, [1])["macro_recall"] == 0.0


def other_model(path, classes):
    torch.manual_seed(7)
    cfg = Config().updated({"image_size": 32, "width": 8})
    model = build_model(cfg, len(classes)).train()
    with torch.no_grad():
        model(torch.randn(16, 3, 32, 32) * 3)
    atomic_save(make_checkpoint(model.eval(), cfg, tuple(classes)), path)
    return path


def test_evaluate_against_reads_both_models_on_the_same_images(untrained_checkpoint, tmp_path, capsys):
    folder = make_photo_folder(tmp_path / "photos", {"anger": 6, "happiness": 6, "sadness": 6})
    other = other_model(tmp_path / "other.pth", CLASSES)
    base = ["evaluate", str(untrained_checkpoint), "--data", str(folder), "--workers", "0"]
    assert main([*base, "--against", str(other), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    alone = evaluate_checkpoint(other, data=str(folder), workers=0)
    against = metrics["against"]
    assert (against["accuracy"], against["macro_recall"]) == (alone["accuracy"], alone["macro_recall"])
    d = against["difference"]
    assert d["accuracy"] == pytest.approx(metrics["accuracy"] - alone["accuracy"])
    assert d["accuracy_95"][0] <= d["accuracy"] <= d["accuracy_95"][1]
    # A model against a copy of itself reads every image alike.
    shutil.copy(untrained_checkpoint, tmp_path / "copy.pth")
    assert main([*base, "--against", str(tmp_path / "copy.pth")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith(f"{untrained_checkpoint} minus it: accuracy +0.0000 (95% +0.0000 to +0.0000)")
    assert last.endswith("0.0% of them read differently")


def test_a_model_of_other_classes_is_refused_in_one_line(untrained_checkpoint, tmp_path, capsys):
    folder = make_photo_folder(tmp_path / "photos", {"anger": 2, "happiness": 2})
    other = other_model(tmp_path / "three.pth", ("Angry", "Happy", "Sad"))
    argv = ["evaluate", str(untrained_checkpoint), "--data", str(folder), "--workers", "0", "--against", str(other)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--against {other} is a model of classes ['Angry', 'Happy', 'Sad']" in err

"""The model that ships inside the package: loads offline, matches its model card, reads a smile."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from ferkit.bundled import BUNDLED, BUNDLED_MODELS
from ferkit.checkpoint import load_model
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.inference.predict import Predictor

MODEL_CARD = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def card_private_test_count(prefix: str = "") -> tuple[int, int]:
    line = f"- {prefix}PrivateTest accuracy (no TTA): "
    match = re.search("^" + re.escape(line) + r"[\d.]+% \((\d+)/(\d+)\)", MODEL_CARD.read_text(), re.MULTILINE)
    assert match, f"MODEL_CARD.md must state '{line}X% (correct/total)'"
    return int(match.group(1)), int(match.group(2))


def test_bundled_weights_ship_small_and_load_offline(no_network):
    assert BUNDLED.is_file() and BUNDLED.stat().st_size <= 25 * 2**20
    loaded = load_model()
    assert loaded.classes == CLASSES
    # Each network's selection figure on PublicTest, recorded when it was chosen (an ensemble keeps its members').
    networks = loaded.checkpoint.get("members") or [loaded.checkpoint]
    assert all(network["metrics"]["accuracy"] > 0.3 for network in networks)


def test_astronaut_is_one_happy_face_with_the_default_model(no_network, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    result = Predictor.default().predict(skimage_data.astronaut())
    assert len(result.faces) == 1
    assert result.faces[0].label == "Happy"
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    assert main(["predict", str(tmp_path / "astronaut.png")]) == 0  # no --checkpoint: the bundled model
    assert ": Happy" in capsys.readouterr().out


# slow: evaluates all 3,589 PrivateTest images.
@pytest.mark.slow
@pytest.mark.realdata
def test_bundled_model_reproduces_the_model_cards_private_test_accuracy(no_network, real_data):
    correct, total = card_private_test_count()
    metrics = evaluate_checkpoint(None, data=str(real_data), split="report", protocol="clean", workers=0)
    assert metrics["split"] == "PrivateTest" and metrics["images"] == total
    assert round(metrics["accuracy"] * total) == correct


def test_int8_twin_ships_and_agrees_with_the_default_model(no_network):
    pytest.importorskip("onnxruntime")
    skimage_data = pytest.importorskip("skimage.data")
    path = BUNDLED_MODELS["fer2013_resnet18.int8"]
    assert path.is_file() and path.stat().st_size <= 14 * 2**20  # two networks' int8 weights (an ensemble)
    int8 = Predictor.from_checkpoint("fer2013_resnet18.int8")
    assert int8.classes == CLASSES and int8.model.precision == "int8"
    fast, reference = int8.predict(skimage_data.astronaut()), Predictor.default().predict(skimage_data.astronaut())
    assert len(fast.faces) == 1 and fast.faces[0].label == "Happy"
    assert fast.faces[0].probabilities == pytest.approx(reference.faces[0].probabilities, abs=0.05)


def test_bundled_models_by_name_on_the_command_line(no_network, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    for name in BUNDLED_MODELS:
        assert main(["predict", str(tmp_path / "astronaut.png"), "--checkpoint", name]) == 0
        assert ": Happy" in capsys.readouterr().out
    assert main(["predict", str(tmp_path / "astronaut.png"), "--checkpoint", "fer2013_resnet50"]) == 2
    assert "bundled model: fer2013_resnet18, fer2013_resnet18.int8" in capsys.readouterr().err


# slow: evaluates all 3,589 PrivateTest images.
@pytest.mark.slow
@pytest.mark.realdata
def test_int8_twin_reproduces_the_model_cards_private_test_accuracy(no_network, real_data):
    pytest.importorskip("onnxruntime")
    correct, total = card_private_test_count("int8 ")
    metrics = evaluate_checkpoint(
        "fer2013_resnet18.int8", data=str(real_data), split="report", protocol="clean", workers=0
    )
    assert metrics["images"] == total and metrics["precision"] == "int8"
    assert round(metrics["accuracy"] * total) == correct


def test_exports_of_the_bundled_model_land_in_the_current_folder(no_network, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shipped = sorted(p.name for p in BUNDLED.parent.iterdir())
    assert main(["export", "--format", "safetensors"]) == 0
    assert "wrote fer2013_resnet18.safetensors" in capsys.readouterr().out
    assert load_model(tmp_path / "fer2013_resnet18.safetensors").classes == CLASSES
    assert sorted(p.name for p in BUNDLED.parent.iterdir()) == shipped  # nothing written into the package

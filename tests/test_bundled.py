"""The model that ships inside the package: loads offline, matches its model card, reads a smile."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from ferkit.checkpoint import BUNDLED, load_model
from ferkit.cli import main
from ferkit.data import CLASSES
from ferkit.evaluate import evaluate_checkpoint
from ferkit.predict import Predictor

MODEL_CARD = Path(__file__).resolve().parents[1] / "MODEL_CARD.md"


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def card_private_test_count() -> tuple[int, int]:
    match = re.search(r"PrivateTest accuracy \(no TTA\): [\d.]+% \((\d+)/(\d+)\)", MODEL_CARD.read_text())
    assert match, "MODEL_CARD.md must state 'PrivateTest accuracy (no TTA): X% (correct/total)'"
    return int(match.group(1)), int(match.group(2))


def test_bundled_weights_ship_small_and_load_offline(no_network):
    assert BUNDLED.is_file() and BUNDLED.stat().st_size <= 25 * 2**20
    loaded = load_model()
    assert loaded.classes == CLASSES
    assert loaded.checkpoint["metrics"]["accuracy"] > 0.3  # recorded at selection time, on PublicTest


def test_astronaut_is_one_happy_face_with_the_default_model(no_network, tmp_path, capsys):
    skimage_data = pytest.importorskip("skimage.data")
    result = Predictor.default().predict(skimage_data.astronaut())
    assert len(result.faces) == 1
    assert result.faces[0].label == "Happy"
    from PIL import Image

    Image.fromarray(skimage_data.astronaut()).save(tmp_path / "astronaut.png")
    assert main(["predict", str(tmp_path / "astronaut.png")]) == 0  # no --checkpoint: the bundled model
    assert ": Happy" in capsys.readouterr().out


def test_bundled_model_reproduces_the_model_cards_private_test_accuracy(no_network, real_data):
    correct, total = card_private_test_count()
    metrics = evaluate_checkpoint(None, data=str(real_data), split="report", protocol="clean", workers=0)
    assert metrics["split"] == "PrivateTest" and metrics["images"] == total
    assert round(metrics["accuracy"] * total) == correct

"""Test-time augmentation: the views each mode averages, and the scale views through the product's paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from ferkit.cli import main
from ferkit.evaluation.predictions import SCALE_FRAMINGS, predict_probs, reframed, tta_views
from ferkit.inference.predict import Predictor


def ramp(width: int = 16) -> torch.Tensor:
    """A batch whose value is each pixel's column: bilinear sampling reads it exactly, so a view's columns say
    which input positions it was sampled from."""
    return torch.arange(width, dtype=torch.float32).expand(2, 3, width, width).clone()


def sampled_columns(width: int, framing: float) -> np.ndarray:
    # Pixel centres about the image's centre, scaled by the framing; outside the image the edge value continues.
    centre = (width - 1) / 2
    return np.clip(centre + (np.arange(width) - centre) * framing, 0, width - 1)


@pytest.mark.parametrize("framing", [0.85, 1.15])
def test_a_reframed_view_samples_a_box_of_that_size_about_the_centre_with_edge_pixels_beyond(framing):
    view = reframed(ramp(), framing)
    assert view.shape == (2, 3, 16, 16)
    expected = torch.tensor(sampled_columns(16, framing), dtype=torch.float32)
    assert torch.allclose(view[0, 0, 5], expected, atol=1e-4)
    # Rows are untouched by a change of column positions: the zoom is the same in both directions.
    assert torch.allclose(reframed(ramp().transpose(-1, -2), framing)[0, 0, :, 5], expected, atol=1e-4)
    if framing > 1:
        assert view[0, 0, 5, 0] == 0 and view[0, 0, 5, -1] == 15  # the edge continues, no zero padding


def test_scales_mode_gives_the_framings_in_order_with_the_input_itself_in_the_middle():
    x = torch.randn(3, 3, 24, 24)
    views = tta_views(x, "scales")
    assert len(views) == len(SCALE_FRAMINGS) == 3
    assert views[1] is x
    # A tighter view enlarges the centre: its centre pixels vary less from one to the next than a looser view's.
    smooth = ramp(24)
    tight, loose = (tta_views(smooth, "scales")[i][0, 0, 12] for i in (0, 2))
    assert (tight[13] - tight[12]) == pytest.approx(0.85, abs=1e-4)
    assert (loose[13] - loose[12]) == pytest.approx(1.15, abs=1e-4)


def test_scale_averaged_probabilities_are_the_mean_of_the_three_framings():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(5, 3, 24, 24)
    averaged = predict_probs(model, x, tta="scales")
    by_hand = torch.stack([model(reframed(x, f)).softmax(dim=1) for f in SCALE_FRAMINGS]).mean(dim=0)
    assert torch.allclose(averaged, by_hand, atol=1e-6)
    assert not torch.allclose(averaged, predict_probs(model, x), atol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_bundled_model_reads_the_astronaut_with_scale_views_on_each_backend(backend):
    photo = data.astronaut()
    plain = Predictor.from_checkpoint(None, backend=backend).predict(photo)
    scaled = Predictor.from_checkpoint(None, backend=backend, tta="scales").predict(photo)
    assert len(scaled.faces) == len(plain.faces) == 1
    probs = np.array(list(scaled.faces[0].probabilities.values()))
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert not np.allclose(probs, list(plain.faces[0].probabilities.values()), atol=1e-4)


def test_predicts_json_says_which_views_each_face_averages(tmp_path, capsys):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(photo)
    assert main(["predict", str(photo), "--tta", "scales", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert (document["prior"], document["tta"]) == ("photos", "scales")
    [face] = Predictor.default(tta="scales").predict(photo).faces
    assert document["results"][0]["faces"][0]["probabilities"] == pytest.approx(face.probabilities, abs=1e-6)

"""Class priors: the training mix recorded with a model, and its probabilities read for another mix on every path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_image_folder, tiny
from PIL import Image
from skimage.data import astronaut

from ferkit.checkpoint import read_checkpoint, store_calibration
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.evaluation.prior import PHOTO_COUNTS, resolve_prior
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.inference.loading import load_for_inference
from ferkit.inference.predict import Predictor
from ferkit.training.loop import train

# FER2013's training split, images per class (its README's table).
FER2013_TRAIN = dict(zip(CLASSES, (3995, 436, 4097, 7215, 4965, 4830, 3171)))


def _frequencies(counts: dict[str, float]) -> np.ndarray:
    values = np.array([counts[c] for c in CLASSES], dtype=np.float64)
    return values / values.sum()


def test_photos_prior_shifts_each_logit_by_the_log_ratio_of_the_two_mixes():
    used, shift = resolve_prior("photos", CLASSES, FER2013_TRAIN, "m.pth")
    photos = _frequencies(PHOTO_COUNTS)  # contempt is no class of the model: the seven are renormalised
    assert used == "photos" and shift == pytest.approx(np.log(photos) - np.log(_frequencies(FER2013_TRAIN)))
    # Fear is 14% of FER2013 and 2% of the photos, Happy 25% and 47%.
    assert shift[CLASSES.index("Fear")] == pytest.approx(np.log(0.0225 / 0.1427), abs=0.01)
    assert shift[CLASSES.index("Happy")] > 0.6
    _, uniform = resolve_prior("uniform", CLASSES, FER2013_TRAIN, "m.pth")
    assert uniform == pytest.approx(np.log(1 / 7) - np.log(_frequencies(FER2013_TRAIN)))
    assert resolve_prior("model", CLASSES, FER2013_TRAIN, "m.pth") == ("model", None)
    assert resolve_prior("model", CLASSES, None, "m.pth") == ("model", None)


def test_auto_reads_photos_only_where_it_can():
    assert resolve_prior("auto", CLASSES, FER2013_TRAIN, "m.pth")[0] == "photos"
    assert resolve_prior("auto", CLASSES, None, "m.pth") == ("model", None)  # a file without its training mix
    own = ("cat", "dog")
    assert resolve_prior("auto", own, {"cat": 1, "dog": 1}, "m.pth") == ("model", None)  # classes AffectNet lacks


def test_a_users_own_weights_and_the_errors_of_bad_ones():
    spec = "neutral=5,happy=3,sad=1,angry=1,surprise=1,fear=0.5,disgust=0.5"
    used, shift = resolve_prior(spec, CLASSES, FER2013_TRAIN, "m.pth")
    given = {"Neutral": 5, "Happy": 3, "Sad": 1, "Angry": 1, "Surprise": 1, "Fear": 0.5, "Disgust": 0.5}
    assert used == spec and shift == pytest.approx(np.log(_frequencies(given)) - np.log(_frequencies(FER2013_TRAIN)))
    for bad, words in (
        ("neutral=5,happy=3", "gives no weight to Angry, Disgust, Fear, Sad, Surprise"),
        (spec.replace("sad=1", "sad=0"), "with weights above 0"),
        (spec.replace("sad=1", "sad=x"), "with weights above 0"),
        (spec + ",contempt=1", "CLASS=WEIGHT for every class"),
        ("everyday", "give one of auto, model, photos, uniform"),
    ):
        with pytest.raises(Exception, match=words):
            resolve_prior(bad, CLASSES, FER2013_TRAIN, "m.pth")
    with pytest.raises(Exception, match="--prior photos knows .* not cat"):
        resolve_prior("photos", ("cat", "Happy"), {"cat": 1, "Happy": 1}, "m.pth")
    with pytest.raises(Exception, match="m.pth does not record how many training images each class had.*calibrate"):
        resolve_prior("photos", CLASSES, None, "m.pth")
    with pytest.raises(Exception, match="m.pth had no training images of Disgust"):
        resolve_prior("uniform", CLASSES, {**FER2013_TRAIN, "Disgust": 0}, "m.pth")


def _calibrated(untrained_checkpoint: Path, tmp_path: Path) -> Path:
    path = tmp_path / "best.pth"
    shutil.copy(untrained_checkpoint, path)
    store_calibration(path, 2.0, FER2013_TRAIN)
    return path


def _logits(path: Path, prior: str, images: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    with torch.no_grad():
        return load_for_inference(path, backend=backend, prior=prior).model(images)


def test_the_prior_moves_pytorch_logits_by_its_shift_after_the_temperature(untrained_checkpoint, tmp_path):
    path = _calibrated(untrained_checkpoint, tmp_path)
    assert read_checkpoint(path)["class_counts"] == FER2013_TRAIN
    images = torch.randn(64, 3, 32, 32)
    own, photos = _logits(path, "model", images), _logits(path, "photos", images)
    shift = torch.from_numpy(resolve_prior("photos", CLASSES, FER2013_TRAIN, path)[1]).float()
    torch.testing.assert_close(photos, own + shift)
    with torch.no_grad():
        raw = load_for_inference(path).model.model(images)
    torch.testing.assert_close(own, raw / 2.0)
    # Reading for another mix is a change of decision: argmaxes move, and only toward classes the shift favours more.
    moved = photos.argmax(1) != own.argmax(1)
    assert moved.any()
    assert (shift[photos.argmax(1)[moved]] > shift[own.argmax(1)[moved]]).all()


@pytest.mark.slow
def test_the_prior_travels_into_onnx_and_int8_and_onnxruntime_applies_it(untrained_checkpoint, image_folder, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = _calibrated(untrained_checkpoint, tmp_path)
    images = torch.randn(8, 3, 32, 32)
    torch_photos = _logits(path, "photos", images)
    torch.testing.assert_close(_logits(path, "photos", images, "onnxruntime"), torch_photos, atol=1e-4, rtol=1e-3)
    onnx_path, int8_path = tmp_path / "model.onnx", tmp_path / "model.int8.onnx"
    assert main(["export", str(path), "--out", str(onnx_path)]) == 0
    torch.testing.assert_close(_logits(onnx_path, "photos", images), torch_photos, atol=1e-4, rtol=1e-3)
    args = ["--int8", "--calibration-data", str(image_folder), "--out", str(int8_path)]
    assert main(["export", str(path), *args]) == 0
    loaded = load_for_inference(int8_path, prior="auto")
    assert (loaded.prior, loaded.class_counts) == ("photos", FER2013_TRAIN)
    shift = torch.from_numpy(resolve_prior("photos", CLASSES, FER2013_TRAIN, path)[1]).float()
    torch.testing.assert_close(_logits(int8_path, "photos", images), _logits(int8_path, "model", images) + shift)


def test_training_and_calibrate_record_the_training_splits_images_per_class(tmp_path, capsys):
    data = make_image_folder(tmp_path / "fer")
    for extra in sorted((data / "train" / "happy").iterdir())[:2]:  # Happy 2 of 4, the rest 4: an uneven mix
        extra.unlink()
    expected = {c: 2 if c == "Happy" else 4 for c in CLASSES}
    train(tiny(data, tmp_path / "run", epochs=1))
    for name in ("best.pth", "last.pth"):
        assert read_checkpoint(tmp_path / "run" / name)["class_counts"] == expected
    weights = tmp_path / "best.safetensors"  # the exported weights carry the record in their header
    assert main(["export", str(tmp_path / "run" / "best.pth"), "--format", "safetensors", "--out", str(weights)]) == 0
    assert load_for_inference(weights, prior="auto").class_counts == expected
    # A file from before (or stripped of) the record gets it from `ferkit calibrate`, as the bundled model did.
    ckpt = read_checkpoint(tmp_path / "run" / "best.pth")
    del ckpt["class_counts"]
    torch.save(ckpt, tmp_path / "old.pth")
    capsys.readouterr()
    assert main(["calibrate", str(tmp_path / "old.pth"), "--data", str(data), "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["class_counts"] == expected
    assert read_checkpoint(tmp_path / "old.pth")["class_counts"] == expected
    # evaluate keeps the model's own mix unless asked, and says which it read for.
    report = evaluate_checkpoint(tmp_path / "old.pth", data=str(data), workers=0)
    uniform = evaluate_checkpoint(tmp_path / "old.pth", data=str(data), workers=0, prior="uniform", out_dir=tmp_path)
    assert (report["prior"], uniform["prior"]) == ("model", "uniform")
    assert (tmp_path / "eval_test_prior_uniform.json").is_file()


def test_the_bundled_model_records_fer2013s_mix_and_reads_photos_for_everyday_photos(tmp_path, capsys):
    assert load_for_inference(None).class_counts == FER2013_TRAIN
    assert Predictor.default().prior == "photos"
    assert Predictor.default(prior="model").prior == "model"
    photo = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(photo)
    read = {}
    for prior in ("auto", "model", "photos"):
        assert main(["predict", str(photo), "--prior", prior, "--json"]) == 0
        document = json.loads(capsys.readouterr().out)
        assert document["prior"] == ("photos" if prior == "auto" else prior)  # the output says what it read for
        read[prior] = np.array(list(document["results"][0]["faces"][0]["probabilities"].values()))
    assert np.array_equal(read["auto"], read["photos"])
    expected = np.exp(np.log(read["model"]) + resolve_prior("photos", CLASSES, FER2013_TRAIN, "bundled")[1])
    assert read["photos"] == pytest.approx(expected / expected.sum(), abs=1e-5)
    assert main(["predict", str(photo), "--prior", "neutral=1"]) == 2
    assert "--prior 'neutral=1' gives no weight to Angry" in capsys.readouterr().err

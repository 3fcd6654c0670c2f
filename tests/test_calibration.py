"""Temperature scaling, the calibration error and cross-dataset evaluation of folders without splits."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_photo_folder

from ferkit.checkpoint import read_checkpoint, save_weights, store_calibration
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.evaluation.calibration import fit_temperature
from ferkit.evaluation.metrics import (
    compute_metrics,
    expected_calibration_error,
    format_metrics,
    reliability_bins,
)
from ferkit.inference.evaluate import evaluate_checkpoint
from ferkit.inference.loading import load_for_inference

CKPLUS = Path(__file__).resolve().parents[2] / "shared/data/ckplus48"


def test_ece_of_a_hand_made_case():
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 0, 1, 1])
    bins = reliability_bins(labels, probs)
    # 0.9 twice in bin 13 (accuracy 1/2), 0.62 in bin 9, 0.5 in bin 7, 1.0 in the last bin (its upper edge is in).
    assert [b["count"] for b in bins] == [0] * 7 + [1, 0, 1, 0, 0, 0, 2, 1]
    by_hand = (2 * abs(0.5 - 0.9) + abs(1 - 0.62) + abs(1 - 0.5) + abs(1 - 1.0)) / 5
    assert expected_calibration_error(bins) == pytest.approx(by_hand)
    assert compute_metrics(labels, probs, ("a", "b", "c"))["ece"] == pytest.approx(by_hand)


def test_the_report_gives_the_confusion_matrix_as_a_table_named_by_class():
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.62, 0.3, 0.08], [0.2, 0.5, 0.3], [0.0, 1.0, 0.0]])
    labels = np.array([0, 1, 0, 1, 1])
    classes = ("Happy", "Sad", "Surprise")
    report = format_metrics(compute_metrics(labels, probs, classes), classes).splitlines()
    # No Surprise image: its recall and F1 are a dash, not a 0 that reads as a failure.
    assert report[4].split() == ["Surprise", "0.000", "-", "-", "0"]
    table = report[-5:]
    assert table[0] == "confusion matrix (rows: true class, columns: predicted)"
    assert [line.split() for line in table[1:]] == [
        list(classes),
        ["Happy", "2", "0", "0"],
        ["Sad", "1", "2", "0"],
        ["Surprise", "0", "0", "0"],
    ]
    assert len({len(line) for line in table[1:]}) == 1  # columns aligned


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 3, (20000, 7)))
    drawn = torch.multinomial((logits / 2.0).softmax(dim=1), 1, generator=torch.Generator().manual_seed(0))
    labels = drawn.squeeze(1).numpy()
    assert fit_temperature(logits.softmax(dim=1).numpy(), labels) == pytest.approx(2.0, rel=0.05)
    # A model already divided by 2 needs no further temperature.
    assert fit_temperature((logits / 2).softmax(dim=1).numpy(), labels) == pytest.approx(1.0, rel=0.05)


def _probs_and_raw(path: Path, backend: str, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    loaded = load_for_inference(path, backend=backend)
    with torch.no_grad():
        return loaded.model(images).softmax(1), loaded.model.model(images), loaded.temperature


def _stored_copy(untrained_checkpoint: Path, tmp_path: Path, temperature: float = 2.5) -> Path:
    path = tmp_path / "best.pth"
    shutil.copy(untrained_checkpoint, path)
    store_calibration(path, temperature)
    return path


def test_temperature_is_stored_and_applied_in_pytorch_without_changing_an_argmax(untrained_checkpoint, tmp_path):
    path = _stored_copy(untrained_checkpoint, tmp_path)
    assert read_checkpoint(path)["temperature"] == 2.5
    images = torch.randn(16, 3, 32, 32)
    probs, logits, temperature = _probs_and_raw(path, "torch", images)
    assert temperature == 2.5
    torch.testing.assert_close(probs, (logits / 2.5).softmax(1))
    assert torch.equal(probs.argmax(1), logits.argmax(1))
    _, untempered, none = _probs_and_raw(untrained_checkpoint, "torch", images)
    assert none == 1.0 and torch.equal(untempered, logits)


def test_safetensors_gets_the_temperature_with_its_tensor_bytes_unchanged(untrained_checkpoint, tmp_path):
    path = tmp_path / "model.safetensors"
    save_weights(read_checkpoint(untrained_checkpoint), path)
    before = path.read_bytes()
    store_calibration(path, 1.7)
    after = path.read_bytes()

    def tensor_bytes(raw: bytes) -> tuple[dict, bytes]:
        size = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + size])
        header.pop("__metadata__")
        return header, raw[8 + size :]

    assert tensor_bytes(after) == tensor_bytes(before)
    assert load_for_inference(path).temperature == 1.7


@pytest.mark.slow
def test_temperature_travels_into_onnx_and_onnxruntime_applies_it(untrained_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    path = _stored_copy(untrained_checkpoint, tmp_path)
    images = torch.randn(8, 3, 32, 32)
    torch_probs, _, _ = _probs_and_raw(path, "torch", images)
    in_memory, logits, temperature = _probs_and_raw(path, "onnxruntime", images)
    assert temperature == 2.5
    torch.testing.assert_close(in_memory, torch_probs, atol=1e-4, rtol=1e-3)
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(path), "--out", str(onnx_path)]) == 0
    probs, file_logits, temperature = _probs_and_raw(onnx_path, "auto", images)
    assert temperature == 2.5
    torch.testing.assert_close(probs, (file_logits / 2.5).softmax(1))
    assert torch.equal(probs.argmax(1), file_logits.argmax(1))
    weights = [t.SerializeToString() for t in onnx.load(str(onnx_path)).graph.initializer]
    from ferkit.inference.export import store_onnx_calibration

    store_onnx_calibration(onnx_path, 1.25)
    assert [t.SerializeToString() for t in onnx.load(str(onnx_path)).graph.initializer] == weights
    assert load_for_inference(onnx_path).temperature == 1.25


def test_ferkit_calibrate_fits_on_the_selection_split_and_writes_the_file(
    untrained_checkpoint, image_folder, tmp_path, capsys
):
    path = tmp_path / "best.pth"
    shutil.copy(untrained_checkpoint, path)
    args = ["--data", str(image_folder), "--workers", "0", "--json"]
    assert main(["calibrate", str(path), *args]) == 0
    fit = json.loads(capsys.readouterr().out)
    stored = read_checkpoint(path)["temperature"]
    assert fit["fitted"] and fit["temperature"] == stored and stored != 1.0 and fit["temperature_before"] == 1.0
    assert fit["nll_after"] <= fit["nll_before"]
    metrics = evaluate_checkpoint(path, data=str(image_folder), split="select", workers=0)
    assert metrics["temperature"] == stored
    # The fit reads the raw logits, so calibrating again finds the same T.
    assert main(["calibrate", str(path), *args]) == 0
    assert json.loads(capsys.readouterr().out)["temperature"] == read_checkpoint(path)["temperature"] == stored
    # A given T (the fp32 model's, for its int8 twin) is written as it is, the weights untouched.
    weights = read_checkpoint(path)["model"]
    assert main(["calibrate", str(path), *args, "--temperature", "1.5"]) == 0
    assert not json.loads(capsys.readouterr().out)["fitted"]
    after = read_checkpoint(path)
    assert after["temperature"] == 1.5 and all(torch.equal(weights[k], after["model"][k]) for k in weights)
    # The figures the run recorded when it chose the weights stay theirs (an ensemble, which has none, gets some).
    assert (after["metrics"], after["select_split"]) == ({"accuracy": 0.5, "macro_f1": 0.25}, "PublicTest")


def test_a_folder_of_class_folders_is_evaluated_whole_and_says_what_it_leaves_out(
    untrained_checkpoint, tmp_path, capsys
):
    folder = make_photo_folder(tmp_path / "ckplus", {"anger": 3, "contempt": 2, "happiness": 4, "sadness": 1}, size=20)
    assert main(["evaluate", str(untrained_checkpoint), "--data", str(folder), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "ckplus/contempt: no FER2013 class; its 2 images are left out" in out
    assert out.splitlines()[1].startswith("all (whole folder, TTA none, fp32): images 8")
    metrics = evaluate_checkpoint(untrained_checkpoint, data=str(folder), workers=0)
    assert metrics["split"] == "all" and metrics["images"] == 8
    assert {c: m["support"] for c, m in metrics["per_class"].items()} == dict.fromkeys(CLASSES, 0) | {
        "Angry": 3,
        "Happy": 4,
        "Sad": 1,
    }
    recalls = [metrics["per_class"][c]["recall"] for c in ("Angry", "Happy", "Sad")]
    assert metrics["macro_classes"] == ["Angry", "Happy", "Sad"]
    assert metrics["macro_recall"] == pytest.approx(np.mean(recalls))
    fewer = evaluate_checkpoint(untrained_checkpoint, data=str(folder), workers=0, min_support=3)
    assert fewer["macro_classes"] == ["Angry", "Happy"]


def test_a_report_folder_named_as_a_file_is_refused_before_evaluating(untrained_checkpoint, tmp_path, capsys):
    folder = make_photo_folder(tmp_path / "faces", {"anger": 2, "happiness": 2}, size=20)
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    argv = ["evaluate", str(untrained_checkpoint), "--data", str(folder), "--workers", "0", "--out"]
    assert main([*argv, str(taken)]) == 2
    assert f"--out {taken} is a file; name a folder" in capsys.readouterr().err
    assert taken.read_text() == "mine"
    assert main([*argv, str(tmp_path / "report")]) == 0
    assert json.loads((tmp_path / "report" / "eval_all.json").read_text())["images"] == 4


def test_evaluation_runs_no_more_workers_than_cores(untrained_checkpoint, tmp_path):
    # PyTorch warns (twice) for a loader with more workers than cores: evaluate's default of 4 did on 2 cores.
    folder = make_photo_folder(tmp_path / "faces", {"anger": 2, "happiness": 2}, size=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        many = evaluate_checkpoint(untrained_checkpoint, data=str(folder), workers=64)
    assert many["per_class"] == evaluate_checkpoint(untrained_checkpoint, data=str(folder), workers=0)["per_class"]


def test_a_folder_with_neither_class_folders_nor_splits_names_both_layouts(untrained_checkpoint, tmp_path, capsys):
    folder = make_photo_folder(tmp_path / "photos", {"cats": 2}, size=20)
    assert main(["evaluate", str(untrained_checkpoint), "--data", str(folder), "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "found folders ['cats']" in err
    assert "folders named for the classes (angry, disgust, fear, happy, neutral, sad, surprise)" in err


def test_detected_faces_are_read_as_predict_reads_a_photo(tmp_path, capsys):
    from PIL import Image
    from skimage.data import astronaut

    from ferkit.data.datasets import Sample
    from ferkit.inference.evaluate import detected_faces
    from ferkit.inference.faces import build_detector
    from ferkit.inference.predict import Predictor

    photo = astronaut()
    (tmp_path / "web" / "happy").mkdir(parents=True)
    (tmp_path / "web" / "sad").mkdir()
    Image.fromarray(photo).save(tmp_path / "web" / "happy" / "astronaut.png")
    Image.fromarray(np.full((200, 200), 128, np.uint8)).save(tmp_path / "web" / "sad" / "grey.png")
    detector = build_detector()
    faces, found = detected_faces([Sample(tmp_path / "web" / "happy" / "astronaut.png", 3, "astronaut")], detector)
    predictor = Predictor.default(detector=detector)
    crop = predictor._faces(photo, detect=True)[1][0]
    assert found == 1 and faces[0].label == 3 and np.array_equal(faces[0].source, crop)
    assert main(["evaluate", "--data", str(tmp_path / "web"), "--faces", "detected", "--workers", "0"]) == 0
    out = capsys.readouterr().out
    # The grey frame has no face and is read whole; the astronaut's aligned face is the bundled model's Happy.
    assert "faces detected in 1 of 2 images" in out.splitlines()[0]
    metrics = evaluate_checkpoint(data=str(tmp_path / "web"), workers=0, detector=detector)
    assert (metrics["faces"], metrics["faces_found"], metrics["per_class"]["Happy"]["recall"]) == ("detected", 1, 1.0)
    assert evaluate_checkpoint(data=str(tmp_path / "web"), workers=0)["faces_found"] is None


def test_calibrating_on_a_folder_without_a_selection_split_is_refused(untrained_checkpoint, tmp_path, capsys):
    folder = make_photo_folder(tmp_path / "web", {"happiness": 2}, size=20)
    path = tmp_path / "best.pth"
    shutil.copy(untrained_checkpoint, path)
    assert main(["calibrate", str(path), "--data", str(folder), "--workers", "0"]) == 2
    assert "has no selection split to fit a temperature on" in capsys.readouterr().err
    assert "temperature" not in read_checkpoint(path)


@pytest.mark.realdata
def test_ckplus48_leaves_contempt_out_and_has_no_neutral(untrained_checkpoint, capsys):
    if not CKPLUS.is_dir():
        pytest.skip(f"CK+48 not found at {CKPLUS} (the project's shared data folder)")
    assert main(["evaluate", str(untrained_checkpoint), "--data", str(CKPLUS), "--workers", "0", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["left_out"] == ["ckplus48/contempt: no FER2013 class; its 54 images are left out"]
    assert metrics["images"] == 927 and metrics["per_class"]["Neutral"]["support"] == 0
    assert "Neutral" not in metrics["macro_classes"]

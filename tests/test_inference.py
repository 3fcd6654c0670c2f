"""The one inference loader: any file ferkit writes, old ones included, with what training recorded."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ferkit.checkpoint import atomic_save, read_checkpoint, save_weights
from ferkit.data.datasets import CLASSES
from ferkit.errors import FerkitError
from ferkit.inference.loading import load_for_inference
from ferkit.inference.predict import Predictor


def test_a_checkpoint_and_its_weights_load_with_the_training_record(untrained_checkpoint, tmp_path):
    save_weights(read_checkpoint(untrained_checkpoint), tmp_path / "best.safetensors")
    for path in (untrained_checkpoint, tmp_path / "best.safetensors"):
        loaded = load_for_inference(path, device="cpu")
        assert loaded.classes == CLASSES and loaded.config.image_size == 32 and loaded.source == path
        assert loaded.record == {
            "epoch": 3,
            "metrics": {"accuracy": 0.5, "macro_f1": 0.25},
            "select_split": "PublicTest",
        }
    assert "preprocess" not in read_checkpoint(tmp_path / "best.safetensors")


def test_a_checkpoint_that_still_carries_a_preprocess_copy_loads_as_before(untrained_checkpoint, tmp_path):
    old = read_checkpoint(untrained_checkpoint)
    old["preprocess"] = {"image_size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    atomic_save(old, tmp_path / "old.pth")
    probs = Predictor.from_checkpoint(tmp_path / "old.pth").classify([pytest.importorskip("numpy").zeros((48, 48))])
    assert probs.shape == (1, len(CLASSES))


def test_the_bundled_model_loads_by_default_and_unknown_backends_are_refused():
    loaded = load_for_inference(None, device="cpu")
    assert loaded.source.name == "fer2013_resnet18.safetensors"
    assert all(network["metrics"]["accuracy"] > 0.3 for network in loaded.record.get("members") or [loaded.record])
    # The int8 twin carries the same record, so the server's /model names the epoch whichever file it runs.
    assert load_for_inference("fer2013_resnet18.int8").record == loaded.record
    with pytest.raises(FerkitError, match="unknown backend 'tensorrt'; choose from auto, torch, onnxruntime"):
        load_for_inference(None, backend="tensorrt")


def test_a_checkpoint_of_an_older_format_is_refused_in_one_line(untrained_checkpoint, tmp_path):
    old = read_checkpoint(untrained_checkpoint)
    old["version"] = 1
    atomic_save(old, tmp_path / "old.pth")
    with pytest.raises(FerkitError, match="older format version 1.*retrain, or use the ferkit version that wrote it"):
        read_checkpoint(tmp_path / "old.pth")


def test_a_training_runs_folder_stands_for_its_best_checkpoint(untrained_checkpoint, tmp_path):
    # The fixture's checkpoint is a best.pth, so its folder is a run folder as `ferkit train --out` leaves it.
    loaded = load_for_inference(untrained_checkpoint.parent, device="cpu")
    assert loaded.source == untrained_checkpoint and loaded.record["epoch"] == 3
    with pytest.raises(FerkitError, match=f"^{tmp_path} is a folder without a best.pth, not a model; .*--data"):
        load_for_inference(tmp_path, device="cpu")


def jpeg_bytes() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (90, 60, 30)).save(out, format="JPEG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        # A photo where the model goes, under any name: said so, with the command that reads photos.
        ("photo.jpg", jpeg_bytes(), "is an image, not a model; .* read photos with `ferkit predict .*photo.jpg`"),
        ("photo.pth", jpeg_bytes(), "is an image, not a model; .* read photos with `ferkit predict .*photo.pth`"),
        ("photo.safetensors", jpeg_bytes(), "is an image, not a model"),
        ("photo.onnx", jpeg_bytes(), "is an image, not a model"),
        # Bytes the weights-only unpickler fails on with a bare KeyError, not one of its usual errors.
        ("notes.pth", b"hi\n", r"is truncated or not a ferkit checkpoint \(no PyTorch tensors\)"),
        # The start of a JPEG that is no image either.
        ("stub.jpg", b"\xff\xd8\xff", r"is truncated or not a ferkit checkpoint"),
    ],
)
@pytest.mark.parametrize("load", [load_for_inference, read_checkpoint], ids=["predict", "export"])
def test_a_file_that_is_no_model_is_refused_in_one_line(tmp_path, name, content, message, load):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FerkitError, match=message) as refused:
        load(path)
    assert "\n" not in str(refused.value)

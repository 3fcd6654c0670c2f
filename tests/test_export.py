"""ONNX export checked without FER2013: ferkit's exporter on the untrained width-8 checkpoint, run by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ferkit.checkpoint import load_model
from ferkit.cli import main
from ferkit.data.datasets import CLASSES
from ferkit.inference.export import export_onnx


@pytest.mark.slow
def test_onnx_export_of_a_synthetic_model_matches_pytorch(untrained_checkpoint, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(untrained_checkpoint, tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["ferkit_classes"]) == list(CLASSES)
    model = load_model(untrained_checkpoint).model.eval()
    # Normalised images of two batch sizes: the batch dimension is dynamic.
    generator = torch.Generator().manual_seed(1)
    for batch in (1, 5):
        images = torch.randn(batch, 3, 32, 32, generator=generator)
        with torch.no_grad():
            expected = torch.softmax(model(images), dim=1).numpy()
        (logits,) = session.run(["logits"], {"image": images.numpy()})
        got = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
        assert got.shape == (batch, len(CLASSES))
        assert np.abs(got - expected).max() < 1e-4
        assert np.abs(expected - 1 / len(CLASSES)).max() > 1e-2  # outputs that tell the images apart


def test_export_into_a_folder_takes_the_checkpoints_name_and_a_wrong_suffix_is_refused(
    untrained_checkpoint, tmp_path, capsys
):
    out = tmp_path / "exports"
    out.mkdir()
    args = ["export", str(untrained_checkpoint), "--format", "safetensors", "--out"]
    assert main([*args, str(out)]) == 0
    written = out / f"{untrained_checkpoint.stem}.safetensors"
    assert load_model(written).classes == load_model(untrained_checkpoint).classes
    assert main([*args, str(tmp_path / "new") + "/"]) == 0
    assert (tmp_path / "new" / written.name).is_file()
    assert main([*args, str(tmp_path / "weights.pth")]) == 2
    assert f"--out {tmp_path / 'weights.pth'}: name a .safetensors file" in capsys.readouterr().err
    assert not (tmp_path / "weights.pth").exists()

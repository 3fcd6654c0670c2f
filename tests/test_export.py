"""ONNX export checked without FER2013: ferkit's exporter on the untrained width-8 checkpoint, run by onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ferkit.checkpoint import load_model
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

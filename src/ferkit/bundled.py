"""The models that ship inside the package (MODEL_CARD.md), by name: the default, used when no checkpoint is given,
and the same weights quantized by `ferkit export --int8` for fast CPU prediction.

Free of PyTorch, so that the commands' --help can list them at once.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
BUNDLED = WEIGHTS / "fer2013_resnet18.safetensors"
BUNDLED_MODELS = {"fer2013_resnet18": BUNDLED, "fer2013_resnet18.int8": WEIGHTS / "fer2013_resnet18.int8.onnx"}

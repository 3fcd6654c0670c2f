"""Inference: loading any model file, face detection, prediction on photos and video, export."""

from .predict import Predictor, predict_source

__all__ = ["Predictor", "evaluate_checkpoint", "predict_source"]


def __getattr__(name: str):
    # Evaluation pulls in the dataset readers, metrics and matplotlib: imported when asked for, so that reading a
    # photo (``ferkit predict``, the server) does not pay for it.
    if name == "evaluate_checkpoint":
        from .evaluate import evaluate_checkpoint

        return evaluate_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

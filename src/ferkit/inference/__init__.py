"""Inference: loading any model file, face detection, prediction on photos and video, export."""

__all__ = ["Predictor", "evaluate_checkpoint", "predict_source"]


def __getattr__(name: str):
    # Each imported when asked for: PyTorch for prediction, and the dataset readers, metrics and matplotlib for
    # evaluation, so that a light module of this package (a command's --help reads its defaults) pays for neither.
    if name in ("Predictor", "predict_source"):
        from . import predict

        return getattr(predict, name)
    if name == "evaluate_checkpoint":
        from .evaluate import evaluate_checkpoint

        return evaluate_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

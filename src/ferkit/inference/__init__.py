"""Inference: loading any model file, face detection, prediction on photos and video, export."""

from .evaluate import evaluate_checkpoint
from .predict import Predictor, predict_source

__all__ = ["Predictor", "evaluate_checkpoint", "predict_source"]

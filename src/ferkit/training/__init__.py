"""Training: the loop, its batches, optimizer and schedule, the run folder and the stop signals."""

from .loop import TrainingInterrupted, train

__all__ = ["TrainingInterrupted", "train"]

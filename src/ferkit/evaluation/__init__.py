"""Evaluation: a model's class probabilities over data, and the metrics computed from them."""

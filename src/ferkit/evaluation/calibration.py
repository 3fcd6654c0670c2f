"""Temperature scaling: one number T that makes a model's confidence match how often it is right.

Probabilities become ``softmax(logits / T)``; dividing every logit by the same positive T changes no
argmax, so accuracy is untouched. T is fitted on the selection split (never the report split) by
minimising the negative log-likelihood, and stored with the model (``temperature``; ONNX metadata
``ferkit_temperature``); a file without one means T = 1.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FerkitError

# The NLL is smooth and unimodal in log T, so a bounded scalar search (Brent's method) over this interval finds its
# minimum without LBFGS's dependence on a start point and a learning rate, in about 30 evaluations.
LOG_T_RANGE = (-3.0, 3.0)


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(probs.astype(np.float64), 1e-300, None))


def nll(log_probs: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = torch.from_numpy(log_probs).double() / temperature
    return float(nn.functional.cross_entropy(scaled, torch.from_numpy(labels).long()))


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the NLL of ``softmax(log(probs) / T)`` on these labels.

    ``log(probs)`` is the logits less a per-row constant, which a softmax ignores, so fitting on
    probabilities is exact and works for any back end (a model already scaled by T0 yields T / T0).
    """
    if len(labels) == 0:
        raise FerkitError("cannot fit a temperature on no images; pass a dataset whose selection split has images")
    from scipy.optimize import minimize_scalar

    log_probs = _log(probs)
    found = minimize_scalar(
        lambda log_t: nll(log_probs, labels, float(np.exp(log_t))),
        bounds=LOG_T_RANGE,
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(np.exp(found.x))


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(probs) / T)``: probabilities as the same model divided by a further ``temperature`` gives them."""
    scaled = torch.from_numpy(_log(probs)) / temperature
    return scaled.softmax(dim=1).numpy()


class Tempered(nn.Module):
    """A classifier whose logits are divided by its temperature, for every caller of the ``nn.Module``; ``shift``
    then moves them to another class mix (:func:`ferkit.evaluation.prior.resolve_prior`)."""

    def __init__(self, model: nn.Module, temperature: float, shift: np.ndarray | None = None) -> None:
        super().__init__()
        if not temperature > 0:
            raise FerkitError(f"temperature {temperature} is not positive; run `ferkit calibrate` on the model again")
        self.model = model
        self.temperature = float(temperature)
        # An ONNX model's precision is fixed in its file; inference_precision reads it through the wrapper.
        self.precision = getattr(model, "precision", None)
        self.register_buffer("shift", None if shift is None else torch.as_tensor(shift, dtype=torch.float32), False)

    def forward(self, x: Tensor) -> Tensor:
        logits = self.model(x) / self.temperature
        return logits if self.shift is None else logits + self.shift

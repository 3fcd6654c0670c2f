"""Class probabilities of a model over a batch or a whole loader, with optional test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from ..config import EVAL_TTA_MODES, Config
from ..data.loaders import batches_of
from ..runtime import autocast

# Issue 20's range of framings a face must read alike at: a detector's box, a crop by hand and a photo's whole frame
# place the same face this much tighter or looser.
SCALE_FRAMINGS = (0.85, 1.0, 1.15)


def reframed(x: Tensor, framing: float) -> Tensor:
    """The batch as a box of ``framing`` times its sides about the centre would show it, at the same size: below 1 the
    centre enlarged, above 1 shrunk with the edge pixels continued beyond the image (as photos continue around a
    detector's box)."""
    if framing == 1.0:
        return x
    theta = torch.tensor([[framing, 0.0, 0.0], [0.0, framing, 0.0]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def tta_views(x: Tensor, mode: str) -> list[Tensor]:
    """Views of a normalised batch whose softmax outputs are averaged."""
    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=[-1])]
    if mode == "tencrop":
        # Imported here: torchvision's import is most of a second that prediction without ten-crop need not pay.
        from torchvision.transforms.v2.functional import ten_crop

        # Crops of a 12.5% larger resize keep the model's input size: four corners, centre, and their mirrors.
        size = x.shape[-1]
        larger = F.interpolate(
            x, size=(size * 9 // 8, size * 9 // 8), mode="bilinear", align_corners=False, antialias=False
        )
        return list(ten_crop(larger, [size, size]))
    if mode == "scales":
        return [reframed(x, f) for f in SCALE_FRAMINGS]
    raise ValueError(f"unknown TTA mode {mode!r}; choose from {EVAL_TTA_MODES}")


@torch.no_grad()
def predict_probs(model: nn.Module, batch: Tensor, precision: str = "fp32", tta: str = "none") -> Tensor:
    model.eval()
    with autocast(batch.device, precision):
        probs = [model(view).float().softmax(dim=1) for view in tta_views(batch, tta)]
    return torch.stack(probs).mean(dim=0)


@torch.no_grad()
def collect_probs(
    model: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32", tta: str = "none"
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels for a whole loader (gathered on the device, copied once)."""
    probs, labels = [], []
    for images, targets, *_ in batches_of(loader):
        if images is None:
            continue
        probs.append(predict_probs(model, images.to(device, non_blocking=True), precision, tta))
        labels.append(targets)
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).numpy()


def inference_precision(model: nn.Module, cfg: Config, asked: str | None = None) -> str:
    """The precision figures are measured in: the one asked for, else the checkpoint's ``eval_precision`` (fp32 by
    default, so a figure does not depend on the machine's bf16 support); an ONNX file's own (fp32 or int8)."""
    # An ONNX model's precision is fixed in the file; autocast cannot change it.
    return getattr(model, "precision", None) or asked or cfg.eval_precision

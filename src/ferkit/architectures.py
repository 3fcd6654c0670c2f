"""The networks ``--arch`` names, as plain numbers: residual blocks per stage and the stem's stride.

The configuration checks names and image sizes against this table, and the command line lists it, without
importing PyTorch; :mod:`ferkit.model` builds the networks from it.
"""

from __future__ import annotations

import math

# layer1 keeps the stem's resolution; each later stage halves it.
STAGE_STRIDES = (1, 2, 2, 2)
# Residual blocks per stage: ResNet18's, and ResNet34's for the same width at twice the depth.
RESNET18_BLOCKS, RESNET34_BLOCKS = (2, 2, 2, 2), (3, 4, 6, 3)
# Name: (blocks per stage, stem stride). The specification's stem keeps full resolution; the s2 networks' halves it.
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "resnet18": (RESNET18_BLOCKS, 1),
    "resnet18s2": (RESNET18_BLOCKS, 2),
    "resnet34": (RESNET34_BLOCKS, 1),
    "resnet34s2": (RESNET34_BLOCKS, 2),
}


def min_image_size(arch: str) -> int:
    """The architecture's total stride: below it layer4 has less than one cell of image, the rest is padding."""
    return SHAPES[arch][1] * math.prod(STAGE_STRIDES)

"""The specification's ResNet18-like network for 96x96 faces (docs/recipe.md, section 2), and a cheaper stem.

Unlike torchvision's ImageNet ResNet18, the specification's stem keeps full resolution (no stride,
no max-pool), so layer1 runs at 96x96 and layer4 at 12x12, and the head is an MLP with dropout.

``resnet18s2`` is the same network with its stem convolution at stride 2: every stage runs at a
quarter of the pixels, so a training image costs a quarter of the FLOPs (1.87 instead of 7.49 GFLOP
at FER2013's native 48x48), for the same parameters. ``width`` (64 in the specification) sets
layer1's channels; each later stage doubles them, and the cost scales with its square.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .architectures import SHAPES, STAGE_STRIDES

if TYPE_CHECKING:
    from .config import Config


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv is followed by BatchNorm, whose shift makes a bias redundant.
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


class Downsample(nn.Sequential):
    """Shortcut projection: makes the skip path match the block output's size and channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class Block(nn.Module):
    """Basic residual unit: relu(downsample(x) + bn2(conv2(relu(bn1(conv1(x))))))."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        needs_projection = stride != 1 or in_channels != out_channels
        self.downsample: nn.Module = (
            Downsample(in_channels, out_channels, stride) if needs_projection else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(self.downsample(x) + out)


class ResNet(nn.Module):
    def __init__(
        self,
        layers: tuple[int, ...] = (2, 2, 2, 2),
        num_classes: int = 7,
        parameter_dropout: float = 0.3,
        hidden: int = 256,
        width: int = 64,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv3x3(3, width, stem_stride), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        widths = (width, width * 2, width * 4, width * 8)
        in_channels = width
        for index, (width, blocks, stride) in enumerate(zip(widths, layers, STAGE_STRIDES), start=1):
            stage = [Block(in_channels, width, stride)] + [Block(width, width) for _ in range(blocks - 1)]
            self.add_module(f"layer{index}", nn.Sequential(*stage))
            in_channels = width
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.head = nn.Sequential(
            nn.Linear(in_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.GELU(),
            nn.Dropout(parameter_dropout),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Start each residual branch at zero so every block begins as the identity: stabler early training.
        for m in self.modules():
            if isinstance(m, Block):
                nn.init.zeros_(m.bn2.weight)

    def features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.flatten(self.pool(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _resnet(arch: str, num_classes: int, parameter_dropout: float, hidden: int, width: int) -> ResNet:
    blocks, stem_stride = SHAPES[arch]
    return ResNet(blocks, num_classes, parameter_dropout, hidden, width, stem_stride)


def resnet18(num_classes: int = 7, parameter_dropout: float = 0.3, hidden: int = 256, width: int = 64) -> ResNet:
    """The specification's network: stem at stride 1, layer1 at the input's full resolution."""
    return _resnet("resnet18", num_classes, parameter_dropout, hidden, width)


def resnet18s2(num_classes: int = 7, parameter_dropout: float = 0.3, hidden: int = 256, width: int = 64) -> ResNet:
    """The specification's network with a stride-2 stem: layer1 at half the input's resolution."""
    return _resnet("resnet18s2", num_classes, parameter_dropout, hidden, width)


def resnet34(num_classes: int = 7, parameter_dropout: float = 0.3, hidden: int = 256, width: int = 64) -> ResNet:
    """The specification's network twice as deep (16 blocks): about 2.1 times its FLOPs at the same width."""
    return _resnet("resnet34", num_classes, parameter_dropout, hidden, width)


def resnet34s2(num_classes: int = 7, parameter_dropout: float = 0.3, hidden: int = 256, width: int = 64) -> ResNet:
    """``resnet34`` with a stride-2 stem; at width 16 it costs what ``resnet18s2`` does at width 24."""
    return _resnet("resnet34s2", num_classes, parameter_dropout, hidden, width)


def build_model(cfg: Config, num_classes: int) -> ResNet:
    """The network a config describes (``arch``, ``width``, head ``hidden`` width and ``dropout``)."""
    return _resnet(cfg.arch, num_classes, cfg.dropout, cfg.hidden, cfg.width)


class Ensemble(nn.Module):
    """Several trained networks read as one: the average of their probabilities, or their weighted average.

    Its output is the log of that average, so softmax (and a temperature) read it as any network's logits, and
    every path that runs a network (evaluation, prediction, ONNX, int8, distillation) runs an ensemble unchanged.
    ``weights``: each member's share (positive, summing to 1); ``None`` gives each the same.
    """

    def __init__(self, members: list[nn.Module], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        if weights is not None and len(weights) != len(members):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        # Plain floats, not a buffer: they are part of the file's record (its members'), and ONNX takes them as
        # constants; the state dict stays the members' weights alone.
        self.weights = None if weights is None else tuple(float(w) for w in weights)

    def forward(self, x: Tensor) -> Tensor:
        # A plain sum of softmaxes, not a logsumexp over stacked log-probabilities: onnxruntime's int8 quantizer
        # cannot infer the stacked tensor's shape.
        if self.weights is None:
            return (sum(m(x).float().softmax(1) for m in self.members) / len(self.members)).log()
        return sum(w * m(x).float().softmax(1) for w, m in zip(self.weights, self.members)).log()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def training_flops(model: nn.Module, image_size: int) -> float:
    """FLOPs to train on one image (forward and backward, as PyTorch's FlopCounterMode counts them).

    Counted on a copy in training mode with a batch of two (BatchNorm needs two), so the model's weights,
    statistics and gradients are untouched. Does not depend on precision or machine: the budget unit. The copy
    lives on the meta device: shapes alone decide the count, and the spec network's pass would take a second.
    """
    return _flops(model, image_size, backward=True)


def inference_flops(model: nn.Module, image_size: int) -> float:
    """FLOPs of one image's forward pass in eval mode (a teacher labelling an image), counted as training_flops."""
    return _flops(model, image_size, backward=False)


def _flops(model: nn.Module, image_size: int, backward: bool) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).to("meta").float().train(backward)
    images = torch.zeros(2, 3, image_size, image_size, device="meta")
    with FlopCounterMode(display=False) as counter:
        out = probe(images)
        if backward:
            out.sum().backward()
    return counter.get_total_flops() / 2


__all__ = [
    "conv3x3",
    "Block",
    "Downsample",
    "ResNet",
    "resnet18",
    "resnet18s2",
    "build_model",
    "Ensemble",
    "count_parameters",
    "training_flops",
    "inference_flops",
]

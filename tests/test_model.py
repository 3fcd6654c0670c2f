import pytest
import torch
from torch import nn

from ferkit.architectures import SHAPES, min_image_size
from ferkit.config import Config
from ferkit.model import (
    Block,
    Downsample,
    ResNet,
    build_model,
    conv3x3,
    count_parameters,
    inference_flops,
    resnet18,
    resnet18s2,
    resnet34,
    training_flops,
)


def test_factory_signature_and_defaults():
    model = resnet18()
    assert isinstance(model, ResNet)
    assert model.head[-1].out_features == 7
    model = resnet18(num_classes=5, parameter_dropout=0.4)
    assert model.head[-1].out_features == 5
    assert model.head[3].p == 0.4


def test_layer_shapes_match_the_specification():
    model = resnet18().eval()
    shapes = {}
    for name in ("stem", "layer1", "layer2", "layer3", "layer4", "pool", "flatten", "head"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        out = model(torch.randn(2, 3, 96, 96))
    assert shapes["stem"] == (2, 64, 96, 96)
    assert shapes["layer1"] == (2, 64, 96, 96)
    assert shapes["layer2"] == (2, 128, 48, 48)
    assert shapes["layer3"] == (2, 256, 24, 24)
    assert shapes["layer4"] == (2, 512, 12, 12)
    assert shapes["pool"] == (2, 512, 1, 1)
    assert shapes["flatten"] == (2, 512)
    assert out.shape == (2, 7)


def test_stem_has_no_spatial_reduction():
    model = resnet18()
    conv = model.stem[0]
    assert (conv.kernel_size, conv.stride, conv.padding, conv.out_channels) == ((3, 3), (1, 1), (1, 1), 64)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_downsample_only_in_first_block_of_layers_2_to_4():
    model = resnet18()
    assert all(isinstance(b.downsample, nn.Identity) for b in model.layer1)
    for layer in (model.layer2, model.layer3, model.layer4):
        assert isinstance(layer[0].downsample, Downsample)
        conv, bn = layer[0].downsample
        assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and isinstance(bn, nn.BatchNorm2d)
        assert isinstance(layer[1].downsample, nn.Identity)
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]


def test_block_computes_relu_of_shortcut_plus_residual():
    torch.manual_seed(0)
    block = Block(8, 16, stride=2).eval()
    for bn in (block.bn1, block.bn2):
        nn.init.normal_(bn.weight)
    x = torch.randn(2, 8, 10, 10)
    with torch.no_grad():
        residual = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x)))))
        expected = torch.relu(block.downsample(x) + residual)
        assert torch.allclose(block(x), expected)
    assert block(x).shape == (2, 16, 5, 5)


def test_head_is_linear_bn_gelu_dropout_linear():
    model = resnet18(parameter_dropout=0.25)
    kinds = [type(m) for m in model.head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]
    assert model.head[0].in_features == 512 and model.head[0].out_features == 256
    assert model.head[3].p == 0.25


def test_conv3x3_helper():
    conv = conv3x3(3, 64, stride=2)
    assert conv.kernel_size == (3, 3) and conv.stride == (2, 2) and conv.padding == (1, 1) and conv.bias is None


@pytest.mark.parametrize("size", [48, 64])
def test_smaller_inputs_still_classify(size):
    with torch.no_grad():
        assert resnet18().eval()(torch.randn(1, 3, size, size)).shape == (1, 7)


def test_flop_count_matches_a_count_by_hand_on_a_tiny_network():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(4 * 8 * 8, 7))
    conv = 2 * (4 * 3 * 3 * 3) * (8 * 8)  # multiply-adds of every output pixel
    linear = 2 * (4 * 8 * 8) * 7
    # Backward: the first conv needs only its weight gradient (the image needs none); the linear layer needs both.
    assert training_flops(net, 8) == conv * 2 + linear * 3
    assert inference_flops(net, 8) == conv + linear  # a teacher's pass: forward only


def test_flop_counts_of_the_spec_network_and_the_stride_2_stem():
    cfg = Config()
    assert training_flops(build_model(cfg, 7), 96) / 1e9 == pytest.approx(29.96, abs=0.01)
    spec48 = training_flops(build_model(cfg, 7), 48)
    s2 = training_flops(build_model(cfg.updated({"arch": "resnet18s2"}), 7), 48)
    assert spec48 / 1e9 == pytest.approx(7.49, abs=0.01) and s2 / 1e9 == pytest.approx(1.87, abs=0.01)
    # Halving the width quarters the cost of every convolution.
    half = training_flops(build_model(cfg.updated({"arch": "resnet18s2", "width": 32}), 7), 48)
    assert half / s2 == pytest.approx(0.25, abs=0.005)


def test_stride_2_stem_layer_shapes_and_width():
    model = build_model(Config(arch="resnet18s2", width=32), 7).eval()
    assert isinstance(resnet18s2(), ResNet)
    shapes = {}
    for name in ("stem", "layer1", "layer2", "layer3", "layer4", "flatten"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 48)).shape == (2, 7)
    assert shapes == {
        "stem": (2, 32, 24, 24),
        "layer1": (2, 32, 24, 24),
        "layer2": (2, 64, 12, 12),
        "layer3": (2, 128, 6, 6),
        "layer4": (2, 256, 3, 3),
        "flatten": (2, 256),
    }
    conv = model.stem[0]
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (2, 2), (1, 1))
    # The same blocks as the specification's network, so the same parameter count at the same width.
    assert count_parameters(resnet18s2()) == count_parameters(resnet18())


def test_resnet34_doubles_the_depth_with_the_same_stages_and_stems():
    deep = build_model(Config(arch="resnet34s2", width=16), 7).eval()
    assert [len(getattr(deep, f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    assert [getattr(deep, f"layer{i}")[0].conv1.stride for i in range(1, 5)] == [(1, 1), (2, 2), (2, 2), (2, 2)]
    assert deep.stem[0].stride == (2, 2) and resnet34().stem[0].stride == (1, 1)
    with torch.no_grad():
        assert deep(torch.randn(2, 3, 48, 48)).shape == (2, 7)
    # Width 16 at twice the depth costs what the quick preset's resnet18s2 at width 24 does (within 8%).
    quick = training_flops(build_model(Config(arch="resnet18s2", width=24), 7), 48)
    assert training_flops(deep, 48) / quick == pytest.approx(0.93, abs=0.01)
    assert training_flops(resnet34(), 96) / training_flops(resnet18(), 96) == pytest.approx(2.09, abs=0.01)


@pytest.mark.parametrize("arch", SHAPES)
def test_every_architecture_the_config_accepts_builds_down_to_its_smallest_image(arch):
    size = min_image_size(arch)
    model = build_model(Config(arch=arch, width=8, image_size=size), 7).eval()
    with torch.no_grad():
        x = model.stem(torch.randn(2, 3, size, size))
        x = model.layer4(model.layer3(model.layer2(model.layer1(x))))
    assert x.shape == (2, 64, 1, 1)  # one cell of image in layer4, at 8 times the width

import pytest
import torch
from torch import nn

from ferkit.model import Block, Downsample, ResNet, conv3x3, resnet18


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

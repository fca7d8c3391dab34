"""The model zoo: paper architecture, parameter counts, torchvision parity, tiny-net overrides."""
import pytest
import torch
import torch.nn as nn
import torchvision

from resnext_dist.models import PRESETS, resnext
from resnext_dist.models.network import BlurConv2d, Bottleneck

# Counts published by torchvision / timm for the same architectures; ResNeXt-152 32x4d is ours
# (mmpretrain publishes "59.95 M" for [3, 8, 36, 3]).
COUNTS = {
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x4d": 44_177_704,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "resnext152_32x4d": 59_951_400,
}


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("arch", sorted(COUNTS))
def test_parameter_counts(arch):
    assert n_params(resnext(arch)) == COUNTS[arch]


def test_resnext152_has_paper_depth():
    m = resnext("resnext152_32x4d")
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]


def test_block_is_fig3c_dense_first_conv_grouped_3x3_strided():
    m = resnext("resnext50_32x4d")
    block = m.layer2[0]
    assert isinstance(block, Bottleneck)
    assert block.conv1.groups == 1 and block.conv1.kernel_size == (1, 1)  # dense (the CIFAR text grouped it)
    assert block.conv2.groups == 32 and block.conv2.stride == (2, 2)  # stride on the 3x3
    assert block.conv2.in_channels == 32 * 4 * 2  # cardinality x group width x 2^stage
    assert block.conv3.out_channels == 128 * 4
    assert isinstance(block.downsample[0], nn.Conv2d) and block.downsample[0].stride == (2, 2)


@pytest.mark.parametrize("arch", ["resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d"])
def test_torchvision_weights_load_strictly_and_match(arch):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, arch)().eval()
    ours = resnext(arch).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - theirs(x)).abs().max().item() < 1e-5


def test_zero_init_residual_makes_blocks_start_as_identity_branch():
    m = resnext("resnext50_32x4d", layers=[1, 1, 1, 1])
    assert all(float(b.bn3.weight.abs().sum()) == 0 for b in m.modules() if isinstance(b, Bottleneck))
    m = resnext("resnext50_32x4d", layers=[1, 1, 1, 1], zero_init_residual=False)
    assert all(float(b.bn3.weight.abs().sum()) > 0 for b in m.modules() if isinstance(b, Bottleneck))


def tiny(**kw):
    args = dict(layers=[1, 1, 1, 1], cardinality=2, group_width=4, base_channels=8, num_classes=10, stem="cifar")
    args.update(kw)
    return resnext("resnext50_32x4d", **args)


def test_overrides_build_a_tiny_net_with_num_classes_honoured():
    m = tiny(num_classes=7)
    assert n_params(m) < 200_000
    assert m.fc.out_features == 7
    assert m.layer1[0].conv2.groups == 2
    assert m(torch.randn(2, 3, 16, 16)).shape == (2, 7)


def test_stems():
    cifar, imagenet = tiny(stem="cifar"), tiny(stem="imagenet")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1) and isinstance(cifar.maxpool, nn.Identity)
    assert imagenet.conv1.kernel_size == (7, 7) and isinstance(imagenet.maxpool, nn.MaxPool2d)
    with pytest.raises(ValueError):
        tiny(stem="other")


@pytest.mark.parametrize("mode", ["fp32", "bf16", "channels_last", "blurpool"])
def test_forward_backward_on_cpu(mode):
    torch.manual_seed(0)
    m = tiny(blurpool=(mode == "blurpool"), zero_init_residual=False)
    x = torch.randn(4, 3, 32, 32)
    if mode == "channels_last":
        m, x = m.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16")):
        out = m(x)
        loss = out.float().logsumexp(1).mean()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_blurpool_keeps_state_dict_keys():
    plain, blurred = tiny(), tiny(blurpool=True)
    assert any(isinstance(mod, BlurConv2d) for mod in blurred.modules())
    assert plain.state_dict().keys() == blurred.state_dict().keys()
    blurred.load_state_dict(plain.state_dict(), strict=True)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown arch"):
        resnext("resnext51")
    assert set(PRESETS) == set(COUNTS)


@pytest.mark.parametrize("arch", sorted(PRESETS))
def test_constructors_by_name_as_torchvision_has_them(arch):
    from resnext_dist import models

    build = getattr(models, arch)
    assert build.__name__ == arch
    with torch.device("meta"):  # the shapes, without allocating 60 M parameters
        m = build(num_classes=10, stem="cifar")
        ref = resnext(arch, num_classes=10, stem="cifar")
    assert isinstance(m, models.ResNeXt) and m.fc.out_features == 10 and isinstance(m.maxpool, nn.Identity)
    assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_constructor_takes_model_keys_and_rejects_others():
    from resnext_dist.models import resnext50_32x4d

    m = resnext50_32x4d(num_classes=3, layers=[1, 1, 1, 1], cardinality=2, group_width=4, base_channels=8)
    assert m.fc.out_features == 3 and m.layer1[0].conv2.groups == 2
    with pytest.raises(TypeError, match="groups"):
        resnext50_32x4d(groups=2)

"""uint8 -> normalized float32 on the device, in the asked memory format."""
import pytest
import torch

from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD, DeviceNormalize


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("source_layout", ["nhwc_view", "nchw"])
def test_normalization_matches_the_torchvision_definition(channels_last, source_layout):
    nhwc = torch.randint(0, 256, (4, 9, 7, 3), dtype=torch.uint8)
    images = nhwc.permute(0, 3, 1, 2)  # what FFCV hands over: an NCHW view of NHWC memory
    if source_layout == "nchw":
        images = images.contiguous()
    labels = torch.tensor([[1], [0], [3], [2]]).view(-1)
    x, y = DeviceNormalize(torch.device("cpu"), channels_last)(images, labels)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    expected = (images.float() / 255 - mean) / std
    assert x.dtype == torch.float32 and torch.allclose(x, expected, atol=1e-5)
    assert x.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert y.dtype == torch.int64 and y.tolist() == [1, 0, 3, 2]
    assert torch.equal(images.permute(0, 2, 3, 1).contiguous(), nhwc)  # the input is left alone


def test_only_uint8_input():
    with pytest.raises(TypeError, match="uint8"):
        DeviceNormalize(torch.device("cpu"), True)(torch.zeros(1, 3, 2, 2), torch.zeros(1))

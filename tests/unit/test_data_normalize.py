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


def _batch(seed: int, n: int = 2, h: int = 5, w: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=g).permute(0, 3, 1, 2)


@pytest.mark.parametrize("channels_last", [True, False])
def test_cpu_outputs_are_reused_only_once_released(channels_last):
    normalize = DeviceNormalize(torch.device("cpu"), channels_last)
    labels = torch.zeros(2, dtype=torch.int64)
    first, _ = normalize(_batch(0), labels)
    address = first.data_ptr()
    held = first.clone()
    second, _ = normalize(_batch(1), labels)
    assert second.data_ptr() != address and torch.equal(first, held)  # still held: not overwritten
    del first
    third, _ = normalize(_batch(2), labels)
    assert third.data_ptr() == address  # released: its memory serves the next batch
    expected, _ = DeviceNormalize(torch.device("cpu"), channels_last)(_batch(2), labels)
    assert torch.equal(third, expected)


def test_a_view_or_autograd_keeps_a_cpu_output_from_reuse():
    normalize = DeviceNormalize(torch.device("cpu"), True)
    labels = torch.zeros(2, dtype=torch.int64)
    x, _ = normalize(_batch(0), labels)
    view = x[:1, :, 1:3]  # a slice of the batch, as a micro-batch split would take
    kept = view.clone()
    conv = torch.nn.Conv2d(3, 4, 3)
    out = conv(x)  # autograd saves the input (x) for the weight gradient
    del x
    for seed in range(1, 8):  # more batches than the recycler keeps
        normalize(_batch(seed), labels)
    assert torch.equal(view, kept)
    del view
    out.sum().backward()  # the saved input is intact: the gradient matches one computed afresh
    grad = conv.weight.grad.clone()
    conv.weight.grad = None
    x2, _ = DeviceNormalize(torch.device("cpu"), True)(_batch(0), labels)
    conv(x2).sum().backward()
    assert torch.equal(conv.weight.grad, grad)


def test_cpu_outputs_follow_the_batch_shape():
    normalize = DeviceNormalize(torch.device("cpu"), True)
    labels = torch.zeros(3, dtype=torch.int64)
    for n, h, w in [(3, 5, 6), (2, 5, 6), (3, 8, 8), (3, 5, 6)]:  # a short last batch, another resolution
        images = _batch(n * h + w, n, h, w)
        x, _ = normalize(images, labels[:n])
        mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        assert x.shape == (n, 3, h, w) and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.allclose(x, (images.float() / 255 - mean) / std, atol=1e-5)

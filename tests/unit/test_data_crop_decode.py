"""Decoding only the crop and our INTER_AREA (resnext_dist/data/crop_decode.py, _cropdecode.c) against FFCV's
whole-image decode and OpenCV resize.

The compiled part is built by the dev setup (pip install -e .); these tests fail, not skip, without it,
so a setup that silently stopped building it is caught.
"""
import io

import numpy as np
import pytest
import torch
from ffcv.fields.decoders import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
from ffcv.libffcv import imdecode, resize_crop
from PIL import Image

from resnext_dist.data import build_loaders, crop_decode
from resnext_dist.data.sources import ImageFolderSource
from resnext_dist.dist import DistInfo
from tests.data_helpers import data_cfg, make_image_folder, unnormalize, write

H, W = 75, 101  # not multiples of the 8/16 px JPEG blocks


def photo(seed=0) -> np.ndarray:
    """Gradients plus noise: JPEG-compressible, and every block different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 2.5) % 256, (yy * 3) % 256, (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)


def jpeg(pixels, **save) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90, **save)
    return np.frombuffer(buf.getvalue(), np.uint8)


def whole(data) -> np.ndarray:
    out = np.empty((H, W, 3), np.uint8)
    assert imdecode(data, out, H, W, H, W, 0, 0, 1, 1, False, False) == 0
    return out


def test_the_compiled_decoder_is_installed():
    assert crop_decode.available(), "resnext_dist/data/_cropdecode*.so missing: pip install -e . builds it " \
                                    "(needs gcc and libjpeg-dev)"


@pytest.mark.parametrize("kind", ["4:4:4", "4:2:2", "4:2:0", "gray"])
def test_the_crop_equals_a_whole_decode_but_for_its_edge_pixels(kind):
    pixels = photo()
    data = jpeg(pixels[..., 0]) if kind == "gray" else jpeg(pixels, subsampling=["4:4:4", "4:2:2", "4:2:0"].index(kind))
    reference = whole(data)
    rng = np.random.default_rng(1)
    crops = [(0, 0, H, W), (H - 1, W - 1, 1, 1), (0, W - 17, H, 17)] + [
        (int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1)), h, w)
        for h, w in rng.integers(1, [H + 1, W + 1], size=(60, 2))]
    for top, left, h, w in crops:
        out = np.zeros((H, W, 3), np.uint8)
        x0 = crop_decode.decode_crop(data, out, top, left, h, w, 3 * W)
        assert 0 <= x0 <= left and x0 % 8 == 0, (top, left, h, w, x0)
        got = out[:h, left - x0:left - x0 + w].astype(int)
        want = reference[top:top + h, left:left + w].astype(int)
        if (h, w) == (H, W) or kind in ("4:4:4", "gray"):
            assert np.array_equal(got, want), (top, left, h, w)  # no chroma upsampling: exact
        else:  # upsampled chroma along the crop's border sees no neighbour beyond it
            assert np.array_equal(got[1:-1, 1:-1], want[1:-1, 1:-1]), (top, left, h, w)
            assert np.abs(got - want).max() <= 32


def test_bad_input_is_reported_not_fatal():
    data = jpeg(photo())
    out = np.empty((H, W, 3), np.uint8)
    garbage = data.copy()
    garbage[2:] = 7  # the SOI marker, then no valid segment: libjpeg's error, which must not exit()
    assert crop_decode.decode_crop(garbage, out, 0, 0, H, W, 3 * W) == -1
    assert crop_decode.decode_crop(data[:100].copy(), out, 0, 0, H, W, 3 * W) in (0, -1)  # truncated: no crash
    assert crop_decode.decode_crop(data, out, 1, 0, H, W, 3 * W) == -2  # past the last row
    assert crop_decode.decode_crop(data, out, 0, 0, H, W, 3 * W - 3) == -2  # rows too narrow for the image


def test_area_resize_equals_opencvs_inter_area_within_one_level():
    """Against FFCV's own resize (OpenCV's cv::resize, INTER_AREA) on crops of random images: any shrink
    factor, integer ones (OpenCV's separate fast path), one side unchanged, non-square, offset crops."""
    rng = np.random.default_rng(0)
    differing = total = 0
    for t in range(600):
        out_h, out_w = (int(v) for v in rng.integers(1, 48, 2))
        if t % 3 == 0:
            h, w = out_h * int(rng.integers(1, 4)), out_w * int(rng.integers(1, 4))
        else:
            h, w = out_h + int(rng.integers(0, 3 * out_h + 1)), out_w + int(rng.integers(0, 3 * out_w + 1))
        image = rng.integers(0, 256, (h + int(rng.integers(0, 5)), w + int(rng.integers(0, 5)), 3), dtype=np.uint8)
        top, left = int(rng.integers(0, image.shape[0] - h + 1)), int(rng.integers(0, image.shape[1] - w + 1))
        want, got = np.empty((out_h, out_w, 3), np.uint8), np.full((out_h, out_w, 3), 7, np.uint8)
        resize_crop(image, top, top + h, left, left + w, want)
        assert crop_decode.resize_area(image, top, left, h, w, got) == 0
        diff = np.abs(got.astype(int) - want)
        assert diff.max() <= 1, (image.shape, top, left, h, w, out_h, out_w)
        differing, total = differing + int((diff > 0).sum()), total + diff.size
    assert differing / total < 0.05  # float rounding only


def test_area_resize_of_a_one_pixel_wide_or_high_source_reads_only_its_pixels():
    """A 1-pixel-wide or -high crop (CI, 2026-12-07: channel 0 came out 0 on a 28x1 crop): its weight window
    was moved back to start before the first input, a read outside the image weighted 0, and 0 x NaN is NaN.
    The resize now refuses (-2) any window outside its inputs, so a regression fails here, not by chance."""
    rng = np.random.default_rng(5)
    for h, w, out_h, out_w in [(28, 1, 14, 1), (1, 28, 1, 14), (1, 1, 1, 1), (5, 1, 5, 1), (1, 7, 1, 3), (9, 1, 2, 1)]:
        image = rng.integers(0, 256, (h + 2, w + 2, 3), dtype=np.uint8)
        want, got = np.empty((out_h, out_w, 3), np.uint8), np.full((out_h, out_w, 3), 7, np.uint8)
        resize_crop(image, 1, 1 + h, 1, 1 + w, want)
        assert crop_decode.resize_area(image, 1, 1, h, w, got) == 0, (h, w, out_h, out_w)
        assert np.abs(got.astype(int) - want).max() <= 1, (h, w, out_h, out_w)


def test_area_resize_leaves_enlarging_to_opencv():
    image, out = np.zeros((5, 9, 3), np.uint8), np.zeros((6, 6, 3), np.uint8)
    assert crop_decode.resize_area(image, 0, 0, 5, 9, out) == -2  # taller output: FFCV's call does it
    assert crop_decode.resize_area(image, 0, 0, 5, 5, np.zeros((5, 5, 3), np.uint8)) == 0


def test_corrupt_jpegs_neither_crash_it_nor_write_past_the_rows_asked_for():
    """Random byte changes and truncations of baseline and progressive JPEGs (a damaged disk): libjpeg's errors
    come back as -1 (no exit(), no crash), a header claiming another size as -2, and nothing lands beyond the
    `height` rows of `out_stride` bytes the caller provided."""
    rng = np.random.default_rng(2)
    pixels, outcomes = photo(), set()
    for progressive in (False, True):
        good = jpeg(pixels, subsampling=2, progressive=progressive)
        for _ in range(300):
            data = good.copy()
            where = rng.integers(0, len(data), int(rng.integers(1, 20)))
            data[where] = rng.integers(0, 256, len(where))
            if rng.random() < 0.2:
                data = data[:int(rng.integers(2, len(data)))].copy()
            h, w = int(rng.integers(1, H + 1)), int(rng.integers(1, W + 1))
            top, left = int(rng.integers(0, H - h + 1)), int(rng.integers(0, W - w + 1))
            out = np.full((H + 4) * 3 * W, 77, np.uint8)
            result = crop_decode.decode_crop(data, out, top, left, h, w, 3 * W)
            assert result >= -2
            assert (out[h * 3 * W:] == 77).all(), "wrote past the rows asked for"
            outcomes.add(min(result, 0))
    assert outcomes == {0, -1, -2}  # decoded (maybe garbled), refused, wrong size: all three were seen


@pytest.fixture(scope="module")
def jpeg_betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("crop_decode")
    make_image_folder(root / "train", classes=("a", "b"), per_class=6, size=(W, H), ext="jpg")
    src = ImageFolderSource(str(root / "train"))
    write(src, root / "train.beton", write_mode="jpg")
    return str(root / "train.beton")


def loaders(path, crop_decode_on):
    cfg = data_cfg(loader="ffcv", train=path, val=path, batch_size=4, train_res=32, val_res=40,
                   val_crop_ratio=0.875, random_crop=False, crop_decode=crop_decode_on)
    return build_loaders(cfg, DistInfo(), seed=0, num_classes=2, channels_last=True)


def pixels_of(train, val):
    return (unnormalize(torch.cat([x for x, _ in train.epoch(0, 32)])).astype(int),
            unnormalize(torch.cat([x for x, _ in val])).astype(int))


def test_ffcv_loaders_use_it_by_default_and_match_ffcvs_own_decoders(jpeg_betons):
    fast, plain = loaders(jpeg_betons, True), loaders(jpeg_betons, False)
    assert isinstance(fast[0].decoder, crop_decode.CropFirstCenterCrop)
    assert type(plain[0].decoder) is CenterCropRGBImageDecoder  # data.crop_decode=false: FFCV's own
    for got, want in zip(pixels_of(*fast), pixels_of(*plain)):
        assert got.shape == want.shape
        diff = np.abs(got - want)  # crop edges' chroma, and INTER_AREA's rounding (1 level)
        assert diff.mean() < 0.5 and diff.max() <= 32, (diff.mean(), diff.max())


def test_random_resized_crop_uses_it_too(jpeg_betons):
    cfg = data_cfg(loader="ffcv", train=jpeg_betons, batch_size=4, train_res=32, random_crop=True)
    train, _ = build_loaders(cfg, DistInfo(), seed=0, num_classes=2, channels_last=True)
    assert isinstance(train.decoder, crop_decode.CropFirstRandomResizedCrop)
    assert isinstance(train.decoder, RandomResizedCropRGBImageDecoder)


def test_an_image_libjpeg_refuses_is_decoded_as_ffcv_would(jpeg_betons, tmp_path):
    """Garbage inside one stored JPEG: the partial decoder fails, FFCV's whole decode takes over, and the
    epoch ends normally (an exception in FFCV's pipeline thread would hang the loader instead)."""
    from ffcv.reader import Reader

    broken = tmp_path / "broken.beton"
    blob = bytearray(open(jpeg_betons, "rb").read())
    meta = Reader(jpeg_betons).metadata
    image = meta[f"f{Reader(jpeg_betons).field_names.index('image')}"]
    ptr = int(image["data_ptr"][3])
    blob[ptr + 2:ptr + 200] = b"\x07" * 198  # keep the SOI marker, wreck the headers
    broken.write_bytes(bytes(blob))
    out = np.empty((H, W, 3), np.uint8)
    assert crop_decode.decode_crop(np.frombuffer(bytes(blob[ptr:ptr + 400]), np.uint8), out, 0, 0, 8, 8, 3 * W) == -1
    train, val = loaders(str(broken), True)
    assert sum(len(y) for _, y in train.epoch(0, 32)) == 12
    assert sum(len(y) for _, y in val) == 12

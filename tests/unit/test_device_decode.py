"""data.decode=gpu (resnext_dist/data/device_decode.py), run on the CPU: the same code with CPU decode.

Against the CPU path (FFCV's decode and resize of the same box; the data.decode=cpu loaders on the same
.beton): pixels within a few levels, labels and order equal. Its own promises: crop boxes are FFCV's
RandomResizedCrop for the same random numbers, those numbers are keyed by (seed, epoch, image) so a resumed
epoch equals the uninterrupted one exactly, and a corrupt stored JPEG is an error naming the image.
"""
import json
import os
import types

import numpy as np
import pytest
import torch
from ffcv.fields import rgb_image
from ffcv.libffcv import imdecode, resize_crop
from PIL import Image

from resnext_dist.data import DataError, build_loaders, device_decode
from resnext_dist.data.normalize import IMAGENET_MEAN, IMAGENET_STD
from resnext_dist.data.sharding import train_shard
from resnext_dist.data.sources import ImageFolderSource
from resnext_dist.dist import DistInfo
from resnext_dist.errors import InputError
from tests.data_helpers import data_cfg, unnormalize, write
from tests.stored_rows import rows_of
from tests.tiny import params, run_train

H, W = 75, 101  # not multiples of the JPEG blocks
SEED, BATCH, N = 3, 4, 18


def photo(seed: int) -> np.ndarray:
    """Gradients plus mild noise: JPEG-friendly, every image different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    base = np.stack([(xx * 2.5 + 7 * seed) % 256, (yy * 3 + 11 * seed) % 256, (xx + yy) % 256], -1)
    return np.clip(base + rng.integers(-10, 10, base.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def betons(tmp_path_factory):
    root = tmp_path_factory.mktemp("device_decode")
    for i in range(N):
        os.makedirs(root / "photos" / f"c{i % 3}", exist_ok=True)
        Image.fromarray(photo(i)).save(root / "photos" / f"c{i % 3}" / f"{i:03d}.jpg", quality=90)
    source = ImageFolderSource(str(root / "photos"))
    write(source, root / "jpg.beton", write_mode="jpg")
    write(source, root / "mixed.beton", write_mode="proportion", compress_probability=0.5)
    return {"jpg": str(root / "jpg.beton"), "mixed": str(root / "mixed.beton"), "labels": source.labels}


def build(path, decode, **fields):
    fields = {"random_crop": False, "train_res": 32, "val_res": 40, "val_crop_ratio": 0.875, **fields}
    cfg = data_cfg(loader="ffcv", train=path, val=path, batch_size=BATCH, decode=decode, **fields)
    return build_loaders(cfg, DistInfo(), seed=SEED, num_classes=3, channels_last=True)


def stored(path):
    """Each image's stored bytes, mode and size, read from the .beton with FFCV's own reader."""
    from ffcv.reader import Reader

    reader = Reader(path)
    meta = reader.metadata[f"f{reader.field_names.index('image')}"]
    table = np.sort(reader.alloc_table, order="ptr")
    blob = np.fromfile(path, np.uint8)
    out = []
    for field in meta:
        size = int(table["size"][np.searchsorted(table["ptr"], field["data_ptr"])])
        out.append((blob[field["data_ptr"]:field["data_ptr"] + size], int(field["mode"]), int(field["height"]),
                    int(field["width"])))
    return out


def cpu_path_crop(sample, box, res) -> np.ndarray:
    """What the data.decode=cpu path makes of this box: FFCV's whole decode, then OpenCV's INTER_AREA resize."""
    data, mode, h, w = sample
    image = np.empty((h, w, 3), np.uint8)
    if mode == device_decode.JPEG:
        assert imdecode(data, image, h, w, h, w, 0, 0, 1, 1, False, False) == 0
    else:
        image = data.reshape(h, w, 3)
    out = np.empty((res, res, 3), np.uint8)
    top, left, bh, bw = box
    resize_crop(image, top, top + bh, left, left + bw, out)
    return out


# ---- crop boxes


def ffcv_boxes(heights, widths, u):
    """FFCV's own get_random_crop (its Python source, not numba's) drawing the given uniforms: tries take
    u[2t], u[2t+1]; the top and left (uniform(0, n) calls) u[20], u[21]."""
    boxes = []
    for h, w, row in zip(heights, widths, u):
        tries, position = iter(row[:20]), iter(row[20:22])

        def uniform(low, high, tries=tries, position=position):
            return low + (high - low) * next(position if low == 0 else tries)

        shim = types.SimpleNamespace(log=np.log, exp=np.exp, sqrt=np.sqrt,
                                     random=types.SimpleNamespace(uniform=uniform))
        get_random_crop = types.FunctionType(rgb_image.get_random_crop.__code__, {**rgb_image.__dict__, "np": shim})
        boxes.append(get_random_crop(int(h), int(w), (0.08, 1.0), np.array((3 / 4, 4 / 3))))
    return np.array(boxes)


def test_random_crops_are_ffcvs_random_resized_crop_for_the_same_random_numbers():
    rng = np.random.default_rng(0)
    heights = np.concatenate([rng.integers(1, 500, 400), [1, 2, 10, 400, 3, 300]])
    widths = np.concatenate([rng.integers(1, 500, 400), [300, 1, 400, 10, 3, 300]])  # thin ones: the fallback
    u = device_decode.keyed_uniforms(1, 2, np.arange(len(heights)))
    u[::7, :20] = 0.999  # no try fits: the fallback for images of every shape
    got = device_decode.random_crops(heights, widths, u)
    assert np.array_equal(got, ffcv_boxes(heights, widths, u))
    top, left, h, w = got.T
    assert (h >= 1).all() and (w >= 1).all() and (top + h <= heights).all() and (left + w <= widths).all()


def test_the_random_numbers_depend_on_seed_epoch_and_image_only():
    u = device_decode.keyed_uniforms(7, 3, np.arange(1000))
    assert u.shape == (1000, device_decode.UNIFORMS) and (u >= 0).all() and (u < 1).all()
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 12 ** -0.5) < 0.01
    again = device_decode.keyed_uniforms(7, 3, np.array([999, 5, 5]))  # another batch, another position
    assert np.array_equal(again, u[[999, 5, 5]])
    for seed, epoch in ((8, 3), (7, 4)):
        other = device_decode.keyed_uniforms(seed, epoch, np.arange(1000))
        assert not np.isclose(other, u).any(axis=1).all()


def test_center_crops_are_ffcvs():
    heights, widths = np.array([75, 100, 3]), np.array([101, 40, 3])
    want = [rgb_image.get_center_crop(int(h), int(w), None, 0.875) for h, w in zip(heights, widths)]
    assert np.array_equal(device_decode.center_crops(heights, widths, 0.875), np.array(want))


# ---- pixels


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])  # on a GPU host: nvJPEG against the CPU path


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["jpg", "mixed"])
def test_crops_match_the_cpu_paths_decode_and_resize_of_the_same_boxes(betons, kind, device):
    samples = stored(betons[kind])
    if kind == "mixed":
        assert {s[1] for s in samples} == {device_decode.JPEG, device_decode.RAW}  # both handed over
    indices = np.arange(N)
    u = device_decode.keyed_uniforms(0, 0, indices)
    boxes = device_decode.random_crops([s[2] for s in samples], [s[3] for s in samples], u)
    boxes[0] = (0, 0, H, W)  # the whole image, and one crop smaller than the output (enlarged)
    boxes[1] = (10, 20, 20, 25)
    decoder = device_decode.DeviceDecoder(torch.device(device), channels_last=True)
    for res in (32, 24):
        got = decoder(rows_of(samples, indices), boxes, np.zeros(N, bool), res)
        assert got.shape == (N, 3, res, res) and got.is_contiguous(memory_format=torch.channels_last)
        got = unnormalize(got).astype(int)
        want = np.stack([cpu_path_crop(samples[i], boxes[i], res) for i in indices]).astype(int)
        # Rounding (the CPU path's uint8), the IDCTs (FFCV's fast one, libjpeg's accurate one here) and
        # roi_align's samples vs INTER_AREA's exact weights at the photos' sharp 255 -> 0 steps
        diff = np.abs(got - want)
        assert diff[2:].mean() < 1.5 and np.percentile(diff[2:], 99) <= 5 and diff[2:].max() <= 24, \
            (diff.mean(), diff.max())
        assert diff[:2].mean() < 3 and diff[:2].max() <= 40  # enlarging: bilinear here, OpenCV's INTER_AREA there


def test_the_resize_is_inter_area_but_for_rounding():
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.stack([xx * 2.5, yy * 3, (xx + yy) * 1.2], -1).clip(0, 255).astype(np.uint8)
    sample = (image.reshape(-1), device_decode.RAW, H, W)
    decoder = device_decode.DeviceDecoder(torch.device("cpu"), channels_last=False)
    for box, res in [((0, 0, 64, 64), 32), ((0, 0, H, W), 32), ((5, 7, 50, 60), 32), ((0, 0, H, W), 24)]:
        got = decoder(rows_of([sample], [0]), np.array([box]), np.zeros(1, bool), res)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
        got = (got * std + mean)[0].permute(1, 2, 0).numpy()
        want = cpu_path_crop(sample, box, res)
        assert np.abs(got - want).max() <= 0.6, box  # float here, OpenCV's uint8 there
    # stripes one pixel wide: an area average makes them gray; bilinear samples alone would alias
    stripes = np.zeros((H, W, 3), np.uint8)
    stripes[:, ::2] = 255
    got = decoder(rows_of([(stripes.reshape(-1), device_decode.RAW, H, W)], [0]), np.array([(0, 0, 48, 48)]),
                  np.zeros(1, bool), 16)
    want = cpu_path_crop((stripes.reshape(-1), device_decode.RAW, H, W), (0, 0, 48, 48), 16)
    assert np.abs(unnormalize(got).astype(int) - want).max() <= 1


def test_flips_mirror_the_crop():
    samples = [(photo(0).reshape(-1), device_decode.RAW, H, W)] * 2
    boxes = np.array([(3, 5, 60, 70)] * 2)
    out = device_decode.DeviceDecoder(torch.device("cpu"), channels_last=False)(
        rows_of(samples, [0, 1]), boxes, np.array([False, True]), 32)
    assert torch.equal(out[1], out[0].flip(-1))


# ---- the loaders


@pytest.fixture(scope="module")
def loaders(betons):
    return {decode: build(betons["jpg"], decode) for decode in ("cpu", "gpu")}


def epoch(train, e, res=32, skip=0):
    """Epoch `e`'s batches, `skip` steps (of one batch: one process) in."""
    batches = list(train.epoch(e, res, start=skip * train.global_batch))
    return [x for x, _ in batches], [y.tolist() for _, y in batches]


def test_labels_order_and_center_crops_equal_the_cpu_paths(loaders):
    for e in (0, 1):
        (cpu_x, cpu_y), (gpu_x, gpu_y) = epoch(loaders["cpu"][0], e), epoch(loaders["gpu"][0], e)
        assert gpu_y == cpu_y and len(gpu_y) == N // BATCH
        diff = np.abs(unnormalize(torch.cat(gpu_x)).astype(int) - unnormalize(torch.cat(cpu_x)))
        assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())
    (cpu_val, gpu_val) = ([(x, y) for x, y in loaders[d][1]] for d in ("cpu", "gpu"))
    assert [y.tolist() for _, y in gpu_val] == [y.tolist() for _, y in cpu_val]
    assert sum(len(y) for _, y in gpu_val) == N  # every image once, the last batch short
    val_x, cpu_val_x = torch.cat([x for x, _ in gpu_val]), torch.cat([x for x, _ in cpu_val])
    assert val_x.shape == (N, 3, 40, 40) and val_x.dtype == torch.float32
    diff = np.abs(unnormalize(val_x).astype(int) - unnormalize(cpu_val_x))
    assert diff.mean() < 1.5 and diff.max() <= 12, (diff.mean(), diff.max())


@pytest.fixture(scope="module")
def random_crop_loader(betons):
    return build(betons["jpg"], "gpu", random_crop=True)[0]


def test_random_crops_keep_the_cpu_paths_labels_and_order(loaders, random_crop_loader):
    assert epoch(random_crop_loader, 1)[1] == epoch(loaders["cpu"][0], 1)[1]


def test_resuming_inside_an_epoch_gives_exactly_the_uninterrupted_crops(betons, random_crop_loader):
    full_x, full_y = epoch(random_crop_loader, 1)
    rest_x, rest_y = epoch(random_crop_loader, 1, skip=2)
    assert rest_y == full_y[2:] and all(torch.equal(a, b) for a, b in zip(rest_x, full_x[2:]))
    fresh = build(betons["jpg"], "gpu", random_crop=True, num_workers=2)[0]  # a new process's loader
    again_x, again_y = epoch(fresh, 1, skip=1)
    assert again_y == full_y[1:] and all(torch.equal(a, b) for a, b in zip(again_x, full_x[1:]))
    other_x, _ = epoch(random_crop_loader, 2)
    assert not torch.equal(torch.cat(other_x), torch.cat(full_x))  # another epoch, other crops


def test_progressive_resizing_sets_the_resolution_per_epoch(random_crop_loader):
    for res in (24, 40, 32):
        x, _ = epoch(random_crop_loader, 0, res=res)
        assert x[0].shape == (BATCH, 3, res, res)


def test_a_corrupt_stored_jpeg_is_an_error_naming_the_image(betons, tmp_path):
    from ffcv.reader import Reader

    blob = bytearray(open(betons["jpg"], "rb").read())
    reader = Reader(betons["jpg"])
    bad = int(train_shard(N, seed=SEED, epoch=0, rank=0, world_size=1, batch_size=BATCH)[6])  # read in epoch 0
    ptr = int(reader.metadata[f"f{reader.field_names.index('image')}"]["data_ptr"][bad])
    blob[ptr + 2:ptr + 200] = b"\x07" * 198  # the SOI marker kept, the headers wrecked
    broken = tmp_path / "broken.beton"
    broken.write_bytes(bytes(blob))
    train, val = build(str(broken), "gpu")
    for batches in (lambda: train.epoch(0, 32), lambda: val):
        with pytest.raises(DataError, match=rf"broken\.beton: image {bad}: its stored JPEG does not decode") as e:
            for _ in batches():
                pass
        assert "\n" not in str(e.value) and isinstance(e.value, InputError)


# ---- config and the trainer


def test_the_config_takes_cpu_or_gpu_and_gpu_only_for_ffcv(tmp_path):
    from resnext_dist.config import load_config

    assert load_config(None, []).data.decode == "cpu"
    with pytest.raises(InputError, match="data.decode.*must be one of cpu, gpu"):
        load_config(None, ["data.decode=nvjpeg"])
    with pytest.raises(InputError, match="data.decode=gpu needs data.loader=ffcv"):
        load_config(None, ["data.decode=gpu", "data.loader=torchvision", f"data.train={tmp_path}"])
    with pytest.raises(InputError, match="data.pad_crop=0"):
        load_config(None, ["data.decode=gpu", "data.loader=ffcv", "data.train=embedded:digits/train", "data.pad_crop=4",
                          "data.train_res=32"])
    assert load_config(None, ["data.decode=gpu", "data.loader=synthetic"]).data.decode == "gpu"  # nothing to decode


@pytest.mark.slow
def test_the_trainer_resumed_mid_epoch_equals_the_uninterrupted_run_bit_for_bit(betons, tmp_path):
    """Random-resized crops and flips on (data.decode=gpu): a run killed after step 7 and resumed from its step-6
    checkpoint (6 of epoch 0's 9 batches done) ends with the uninterrupted run's weights: it saw the same crops."""
    common = ["data.loader=ffcv", f"data.train={betons['jpg']}", f"data.val={betons['jpg']}", "data.decode=gpu",
              "data.random_crop=true", "data.batch_size=2", "data.num_workers=1", "model.num_classes=3",
              "train.epochs=1", "train.deterministic=true", "train.log_every_steps=1", "checkpoint.every_steps=3"]
    straight = run_train(tmp_path / "straight", common, timeout=300)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    crashed = run_train(tmp_path / "resumed", common, timeout=300, RESNEXT_DIST_FAULT="kill@0:7")
    assert crashed.returncode != 0
    resumed = run_train(tmp_path / "resumed", common, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "resumed" / "log.jsonl")]
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [6]
    a, b = params(tmp_path / "straight"), params(tmp_path / "resumed")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "resumed" / "DONE").exists()


# ---- decode ahead (a background thread; on CUDA its own stream)


def test_decoding_ahead_on_a_thread_gives_the_same_batches_in_the_same_order(betons, random_crop_loader):
    """data.decode_ahead=2 (the default: a background thread) against 0 (in the caller's thread): bit for bit."""
    inline = build(betons["jpg"], "gpu", random_crop=True, decode_ahead=0)[0]
    (a_x, a_y), (b_x, b_y) = epoch(random_crop_loader, 1), epoch(inline, 1)
    assert a_y == b_y and len(a_x) == len(b_x) and all(torch.equal(a, b) for a, b in zip(a_x, b_x))


def test_the_decode_thread_keeps_order_raises_in_order_and_stops_when_left():
    import threading

    from resnext_dist.data.decode_ahead import decode_ahead

    closed = []

    def source(n):
        try:
            for k in range(n):
                yield torch.full((1,), k), torch.tensor([k])
        finally:
            closed.append(n)

    def decode(x):
        if int(x) == 3:
            raise DataError("image 3: broken")
        return x * 10

    cpu = torch.device("cpu")
    assert [int(x) for x, _ in decode_ahead(source(3), decode, cpu, 2)] == [0, 10, 20]
    seen = []
    with pytest.raises(DataError, match="image 3"):
        for x, y in decode_ahead(source(6), decode, cpu, 2):
            seen.append(int(y))
    assert seen == [0, 1, 2]  # the batches before the broken one, then its error
    it = decode_ahead(source(1000), decode, cpu, 2)
    next(it)
    it.close()  # the consumer leaves early: the thread ends and the source is closed (FFCV's thread with it)
    assert closed == [3, 6, 1000]
    assert not [t for t in threading.enumerate() if t.name == "resnext_dist-decode-ahead"]


def test_the_gpu_scripts_decode_check_passes_and_would_catch_a_changing_decode(betons, monkeypatch):
    """bench decode_check (launch/gpu_bench.sh's first step) on this CPU: a raw-and-JPEG batch decoded 3 times
    while the tiny net trains equals itself and the CPU decode; a decode whose output changes (as a memory race
    would make it) fails it."""
    from resnext_dist.bench.decode import stored_batches
    from resnext_dist.bench.decode_check import check
    from resnext_dist.config import load_config
    from tests.tiny import TINY

    cfg = load_config(None, [*TINY, "data.train_res=32"])
    batch = stored_batches(betons["mixed"], BATCH, 1)[0]
    assert check(batch, cfg, torch.device("cpu"), 3) == {"repeats": 3, "unequal_repeats": 0, "cpu_mean_levels": 0.0,
                                                        "cpu_max_levels": 0, "resize": "reference",
                                                        "vs_reference_resize_max": 0.0, "ok": True}
    real, calls = device_decode.DeviceDecoder.__call__, []

    def racy(self, *args):
        out = real(self, *args)
        calls.append(1)
        return out + 1e-3 if len(calls) == 3 else out  # the second decode on the checked "device" differs

    monkeypatch.setattr(device_decode.DeviceDecoder, "__call__", racy)
    result = check(batch, cfg, torch.device("cpu"), 3)
    assert result["unequal_repeats"] == 1 and not result["ok"]

    calls.clear()

    def stray(self, *args):  # the checked resize strays from the reference resize of the same decode
        out = real(self, *args)
        calls.append(1)
        return out + 1e-2 if len(calls) == 5 else out  # call 5: the same device's reference resize

    monkeypatch.setattr(device_decode.DeviceDecoder, "__call__", stray)
    result = check(batch, cfg, torch.device("cpu"), 3)
    assert result["unequal_repeats"] == 0 and result["vs_reference_resize_max"] > 1e-3 and not result["ok"]

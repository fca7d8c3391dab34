"""The three loaders behind one interface, in one process: order, resume position, an uneven split of the global
batch, resolution, exact validation.

The same 37 training and 11 validation images (3 classes, 24x20 px PNGs) are read as an ImageFolder by
the torchvision loader and as a raw-mode .beton by the FFCV loader; synthetic needs no files. FFCV
compiles each pipeline on its first epoch (~5 s center crop, ~15-20 s random-resized crop), so loaders
are built once per module.
"""
import numpy as np
import pytest
import torch

from resnext_dist.data import build_loaders
from resnext_dist.data.sharding import epoch_permutation, train_shard
from resnext_dist.data.sources import ImageFolderSource
from resnext_dist.dist import DistInfo
from tests.data_helpers import data_cfg, make_image_folder, unnormalize, write

SEED, BATCH, N = 5, 5, 37
KINDS = ["ffcv", "torchvision", "synthetic"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("loaders")
    make_image_folder(root / "train", classes=("a", "b"), per_class=12, size=(24, 20))
    make_image_folder(root / "train", classes=("c",), per_class=13, size=(24, 20), seed=9)  # 37 images
    make_image_folder(root / "val", classes=("a", "b"), per_class=4, size=(24, 20), seed=1)
    make_image_folder(root / "val", classes=("c",), per_class=3, size=(24, 20), seed=2)  # 11: a last batch of 1
    train_src, val_src = ImageFolderSource(str(root / "train")), ImageFolderSource(str(root / "val"))
    write(train_src, root / "train.beton", write_mode="raw")
    write(val_src, root / "val.beton", write_mode="raw")
    paths = {"ffcv": (str(root / "train.beton"), str(root / "val.beton")),
             "torchvision": (str(root / "train"), str(root / "val")), "synthetic": ("", "")}
    return {"paths": paths, "train_labels": train_src.labels, "val_labels": val_src.labels}


def build(dataset, kind, channels_last=True, global_batch=0, **fields):
    train, val = dataset["paths"][kind]
    fields = {"random_crop": False, "batch_size": BATCH, **fields}
    cfg = data_cfg(loader=kind, train=train, val=val, synthetic_size=N, val_synthetic_size=11, **fields)
    return build_loaders(cfg, DistInfo(), seed=SEED, num_classes=3, channels_last=channels_last,
                         global_batch=global_batch)


@pytest.fixture(scope="module")
def loaders(dataset):
    return {kind: build(dataset, kind) for kind in KINDS}


def epoch(train, e, res=16, start=0):
    batches = list(train.epoch(e, res, start))
    return [x for x, _ in batches], [y for _, y in batches]


@pytest.mark.parametrize("kind", KINDS)
def test_batches_are_normalized_float_channels_last_with_int64_labels(loaders, kind):
    train, _ = loaders[kind]
    assert train.batches_per_epoch == N // BATCH
    images, labels = epoch(train, 0)
    assert len(images) == N // BATCH
    x, y = images[0], labels[0]
    assert x.shape == (BATCH, 3, 16, 16) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == (BATCH,) and y.dtype == torch.int64 and 0 <= y.min() and y.max() < 3
    assert -2.2 < x.min() < 0 < x.max() < 2.7  # ImageNet normalization of 0..255


@pytest.mark.parametrize("kind", ["ffcv", "torchvision"])
def test_epoch_order_is_the_sharded_permutation_of_seed_and_epoch(dataset, loaders, kind):
    train, _ = loaders[kind]
    for e in (0, 3):
        expected = dataset["train_labels"][train_shard(N, seed=SEED, epoch=e, rank=0, world_size=1, batch_size=train.batch_size)]
        got = torch.cat(epoch(train, e)[1]).numpy()  # also: earlier batches were not overwritten later
        assert np.array_equal(got, expected[:len(got)])


@pytest.mark.parametrize("kind", KINDS)
def test_start_resumes_inside_an_epoch_exactly(loaders, kind):
    train, _ = loaders[kind]
    images, labels = epoch(train, 2)
    images_skip, labels_skip = epoch(train, 2, start=3 * BATCH)  # 3 steps of one batch done
    assert len(labels_skip) == len(labels) - 3
    for a, b, ya, yb in zip(images[3:], images_skip, labels[3:], labels_skip):
        assert torch.equal(ya, yb) and torch.equal(a, b)
    assert epoch(train, 2, start=train.steps_per_epoch * BATCH)[1] == []


@pytest.mark.parametrize("kind", KINDS)
def test_an_uneven_global_batch_is_cut_into_micro_batches_of_the_global_order(dataset, kind):
    """A global batch of 11 with micro-batches of at most 4: 3 micro-steps of 4, 4 and 3 images per step (FFCV
    reads batches of 4 and the loader re-cuts them), 3 whole steps of the 37 images, in the epoch's global order;
    resumed 1 step in, the same images of the remaining steps."""
    train, _ = build(dataset, kind, batch_size=4, global_batch=11)
    assert (train.steps_per_epoch, train.batches_per_epoch) == (3, 9)
    images, labels = epoch(train, 1)
    assert [len(y) for y in labels] == [4, 4, 3] * 3
    assert all(x.shape[0] == len(y) and x.is_contiguous(memory_format=torch.channels_last)
               for x, y in zip(images, labels))
    order = epoch_permutation(N, seed=SEED, epoch=1)[:33]
    if kind != "synthetic":
        assert np.array_equal(torch.cat(labels).numpy(), dataset["train_labels"][order])
    rest_images, rest = epoch(train, 1, start=11)
    assert [len(y) for y in rest] == [4, 4, 3] * 2
    assert all(torch.equal(a, b) for a, b in zip(rest + rest_images, labels[3:] + images[3:]))


@pytest.mark.parametrize("kind", KINDS)
def test_order_has_no_hidden_state(loaders, kind):
    train, _ = loaders[kind]
    first = torch.cat(epoch(train, 4)[1])
    epoch(train, 1)
    for x, _ in train.epoch(0, 16):  # leaving an epoch early must not disturb the next one
        break
    assert torch.equal(torch.cat(epoch(train, 4)[1]), first)
    assert not torch.equal(torch.cat(epoch(train, 5)[1]), first)


@pytest.mark.parametrize("kind", KINDS)
def test_resolution_can_change_every_epoch(loaders, kind):
    train, _ = loaders[kind]
    for e, res in enumerate((16, 24, 8, 16)):
        images, _ = epoch(train, e, res=res)
        assert images[0].shape == (BATCH, 3, res, res) and images[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kind", KINDS)
def test_validation_reads_every_image_once_without_dropping_the_last_batch(dataset, loaders, kind):
    _, val = loaders[kind]
    batches = list(val)
    assert val.num_images == 11 and len(val) == len(batches) == 3
    assert [tuple(y.shape) for _, y in batches] == [(5,), (5,), (1,)]
    assert batches[0][0].shape == (5, 3, 16, 16)
    if kind != "synthetic":
        assert np.array_equal(torch.cat([y for _, y in batches]).numpy(), dataset["val_labels"])


def test_ffcv_and_torchvision_give_the_same_batches(loaders):
    ffcv_images, ffcv_labels = epoch(loaders["ffcv"][0], 1)
    tv_images, tv_labels = epoch(loaders["torchvision"][0], 1)
    assert all(torch.equal(a, b) for a, b in zip(ffcv_labels, tv_labels))
    # Same crop box; OpenCV INTER_AREA vs PIL's antialiased bilinear resize (24x20 -> 16x16 after the crop).
    diff = np.abs(unnormalize(torch.cat(ffcv_images)).astype(int) - unnormalize(torch.cat(tv_images)).astype(int))
    assert diff.mean() < 12, diff.mean()
    ffcv_val = torch.cat([y for _, y in loaders["ffcv"][1]])
    assert torch.equal(ffcv_val, torch.cat([y for _, y in loaders["torchvision"][1]]))


@pytest.mark.slow  # compiling FFCV's random-resized-crop pipeline takes 15-30 s
@pytest.mark.parametrize("kind", ["ffcv", "torchvision"])
def test_random_resized_crop_and_flip_for_training(dataset, kind):
    train, _ = build(dataset, kind, random_crop=True, train_res=32)
    a, labels_a = epoch(train, 0, res=32)
    b, labels_b = epoch(train, 0, res=32)
    assert all(torch.equal(x, y) for x, y in zip(labels_a, labels_b))  # same order ...
    assert not torch.equal(a[0], b[0])  # ... different crops
    assert a[0].shape == (BATCH, 3, 32, 32) and torch.isfinite(a[0]).all()


def test_channels_last_off_gives_contiguous_nchw(dataset):
    for kind in KINDS:
        train, val = build(dataset, kind, channels_last=False)
        x, _ = next(iter(train.epoch(0, 16)))
        assert x.is_contiguous(), kind
        assert next(iter(val))[0].is_contiguous(), kind


@pytest.mark.parametrize("kind", ["ffcv", "torchvision"])
def test_cifar_style_pad_crop_shifts_the_whole_image(dataset, kind):
    """data.pad_crop=4: the whole image at train_res, shifted by up to 4 px (zero padding shows), flipped."""
    train, _ = build(dataset, kind, random_crop=True, pad_crop=4, val_crop_ratio=1.0, train_res=16)
    plain, _ = build(dataset, kind, random_crop=False, val_crop_ratio=1.0, train_res=16)
    shifted = torch.cat(epoch(train, 0, res=16)[0])
    centered = torch.cat(epoch(plain, 0, res=16)[0])
    assert shifted.shape == centered.shape
    assert not torch.equal(shifted, centered)
    # the padding shows as black pixels, which the source images do not have
    black = lambda x: unnormalize(x).max(axis=3) == 0  # (N, H, W): pixels black in every channel
    assert black(shifted).any() and not black(centered).any()

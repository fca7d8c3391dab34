"""Sources: ImageFolder, CIFAR python folders, scikit-learn's digits, synthetic; their bad-input errors."""
import os

import numpy as np
import pytest
from PIL import Image

from resnext_dist.data.errors import CorruptImage, DataError
from resnext_dist.data.sources import (CifarSource, DigitsSource, ImageFolderSource, SyntheticSource,
                                       source_from_spec)
from tests.data_helpers import make_cifar_folder, make_image_folder


def test_digits_has_a_fixed_split_of_all_1797_images_upscaled_to_rgb():
    train, val = DigitsSource("train", size=32), DigitsSource("val", size=32)
    assert (len(train), len(val)) == (1437, 360)
    assert sorted(np.unique(train.labels)) == list(range(10)) and train.classes == [str(k) for k in range(10)]
    image, label = train[5]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and 0 <= label < 10
    assert (image[..., 0] == image[..., 1]).all() and image.max() > 200  # grey made RGB, full range
    again = DigitsSource("train", size=32)
    assert np.array_equal(again.labels, train.labels) and np.array_equal(again[5][0], image)
    assert DigitsSource("val", size=8)[0][0].shape == (8, 8, 3)


def test_digits_bad_arguments():
    with pytest.raises(DataError, match="size 4 must be >= 8"):
        DigitsSource("train", size=4)
    with pytest.raises(DataError, match="split 'test'"):
        DigitsSource("test")


def test_image_folder_reads_classes_in_sorted_order_and_pixels_exactly(tmp_path):
    made = make_image_folder(tmp_path / "tree", classes=("cat", "ant"), per_class=2)
    os.makedirs(tmp_path / "tree" / ".hidden")  # skipped, like notebook checkpoints
    (tmp_path / "tree" / "ant" / "notes.txt").write_text("not an image")
    src = ImageFolderSource(str(tmp_path / "tree"))
    assert src.classes == ["ant", "cat"] and len(src) == 4
    for i in range(len(src)):
        pixels, label = made[src.describe(i)]
        image, got_label = src[i]
        assert np.array_equal(image, pixels) and got_label == 1 - label  # sorted: ant=0, cat=1


def test_image_folder_converts_grey_and_rgba_to_rgb(tmp_path):
    (tmp_path / "t" / "x").mkdir(parents=True)
    Image.new("L", (5, 4), 77).save(tmp_path / "t" / "x" / "grey.png")
    Image.new("RGBA", (5, 4), (1, 2, 3, 4)).save(tmp_path / "t" / "x" / "rgba.png")
    src = ImageFolderSource(str(tmp_path / "t"))
    assert [src[i][0].shape for i in range(2)] == [(4, 5, 3), (4, 5, 3)]


@pytest.mark.parametrize("case", ["missing", "file", "no_classes", "empty_class"])
def test_image_folder_bad_input_names_the_path(tmp_path, case):
    root = tmp_path / "tree"
    if case == "file":
        root.write_text("x")
    elif case == "no_classes":
        root.mkdir()
        (root / "loose.png").write_bytes(b"")
    elif case == "empty_class":
        make_image_folder(root, classes=("a",), per_class=1)
        (root / "b").mkdir()
    with pytest.raises(DataError) as e:
        ImageFolderSource(str(root))
    message = str(e.value)
    assert "\n" not in message
    expected = {"missing": f"{root}: no such directory", "file": f"{root}: not a directory",
                "no_classes": f"{root}: no class folders", "empty_class": f"{root / 'b'}: class folder has no images"}
    assert message.startswith(expected[case]), message


def test_a_corrupt_image_is_found_when_decoded_and_named(tmp_path):
    make_image_folder(tmp_path / "t", classes=("a",), per_class=2, ext="jpg")
    bad = tmp_path / "t" / "a" / "001.jpg"
    bad.write_bytes(bad.read_bytes()[:100])  # truncated JPEG
    src = ImageFolderSource(str(tmp_path / "t"))  # opening does not decode
    src[0]
    with pytest.raises(CorruptImage, match=f"^{bad}: unreadable image"):
        src[1]


@pytest.mark.parametrize("kind", ["fifo", "fifo-link", "socket", "device-link"])
def test_an_image_that_is_no_regular_file_is_named_never_waited_on(tmp_path, kind):
    from tests.unit.test_files import deadline, not_regular

    make_image_folder(tmp_path / "t", classes=("a",), per_class=1)
    path = not_regular(tmp_path / "t" / "a", kind)
    src = ImageFolderSource(str(tmp_path / "t"))
    assert src.describe(1) == path
    with deadline(), pytest.raises(CorruptImage, match=f"^{path}: .*not a regular file; expected an image file$"):
        src[1]


def test_cifar_files_and_class_names_that_are_no_regular_files_are_refused(tmp_path):
    from resnext_dist.data.sources import class_names_for
    from tests.unit.test_files import deadline

    make_cifar_folder(tmp_path / "c")
    os.remove(tmp_path / "c" / "test_batch")
    os.mkfifo(tmp_path / "c" / "test_batch")
    (tmp_path / "x.beton").write_bytes(b"")
    os.mkfifo(tmp_path / "x.classes.json")
    with deadline(), pytest.raises(DataError, match="test_batch: a FIFO, not a regular file; expected a CIFAR file$"):
        CifarSource(str(tmp_path / "c"), "val")
    with deadline(), pytest.raises(DataError, match="x.classes.json: a FIFO, not a regular file"):
        class_names_for(str(tmp_path / "x.beton"))


@pytest.mark.parametrize("kind", ["cifar10", "cifar100"])
def test_cifar_python_folder_both_splits(tmp_path, kind):
    train_labels, val_labels = make_cifar_folder(tmp_path / kind, kind=kind)
    train, val = CifarSource(str(tmp_path / kind), "train"), CifarSource(str(tmp_path / kind), "val")
    assert list(train.labels) == train_labels and list(val.labels) == val_labels
    assert len(train.classes) == (10 if kind == "cifar10" else 100) and train.classes[3] == "name3"
    assert train[0][0].shape == (32, 32, 3) and train[0][0].dtype == np.uint8


def test_cifar_pixels_are_unpacked_from_channel_planes(tmp_path):
    import pickle

    make_cifar_folder(tmp_path / "c")
    with open(tmp_path / "c" / "test_batch", "rb") as f:
        batch = pickle.load(f)
    image = CifarSource(str(tmp_path / "c"), "val")[2][0]
    plane = batch["data"][2].reshape(3, 32, 32)
    assert np.array_equal(image[..., 1], plane[1]) and image[7, 9, 2] == plane[2, 7, 9]


def test_cifar_bad_input(tmp_path):
    with pytest.raises(DataError, match="no such directory"):
        CifarSource(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a CIFAR-10/100 python folder"):
        CifarSource(str(tmp_path / "empty"))
    make_cifar_folder(tmp_path / "c")
    (tmp_path / "c" / "data_batch_3").write_bytes(b"garbage")
    with pytest.raises(DataError, match=f"^{tmp_path / 'c' / 'data_batch_3'}: unreadable CIFAR file"):
        CifarSource(str(tmp_path / "c"), "train")
    os.remove(tmp_path / "c" / "data_batch_3")
    with pytest.raises(DataError, match=f"^{tmp_path / 'c' / 'data_batch_3'}: missing CIFAR file"):
        CifarSource(str(tmp_path / "c"), "train")
    CifarSource(str(tmp_path / "c"), "val")  # the other split is still fine


def test_synthetic_images_depend_on_seed_and_index_only():
    a, b = SyntheticSource(20, 3, size=16, seed=1), SyntheticSource(20, 3, size=16, seed=1)
    assert np.array_equal(a[7][0], b[7][0]) and not np.array_equal(a[7][0], a[8][0])
    assert list(a.labels[:5]) == [0, 1, 2, 0, 1] and a[7][0].shape == (16, 16, 3)
    with pytest.raises(DataError):
        SyntheticSource(0, 3)


def test_source_from_spec_picks_the_kind(tmp_path):
    make_cifar_folder(tmp_path / "c")
    make_image_folder(tmp_path / "f", classes=("a",), per_class=1)
    assert isinstance(source_from_spec(str(tmp_path / "c"), "val"), CifarSource)
    assert isinstance(source_from_spec(str(tmp_path / "f"), "train"), ImageFolderSource)
    digits = source_from_spec("digits:16", "val")
    assert isinstance(digits, DigitsSource) and digits.size == 16 and len(digits) == 360
    assert source_from_spec("digits", "train").size == 32
    with pytest.raises(DataError, match="digits:SIZE"):
        source_from_spec("digits:big", "train")
    with pytest.raises(DataError, match="no such directory"):
        source_from_spec(str(tmp_path / "missing"), "train")

"""Checks of the data against the config before training: one line naming the file, a InputError (exit 2)."""
import os

import pytest

from resnext_dist.errors import InputError
from resnext_dist.data import DataError, build_loaders, check_dataset
from resnext_dist.data.sources import SyntheticSource
from resnext_dist.dist import DistInfo
from tests.data_helpers import data_cfg, make_image_folder, write


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    """24 synthetic 8 px images, labels 0..11 (i % 12)."""
    path = tmp_path_factory.mktemp("checks") / "twelve.beton"
    write(SyntheticSource(24, 12, size=8), path, write_mode="raw")
    return str(path)


def check(num_classes=12, **fields):
    return check_dataset(data_cfg(**fields), num_classes)


def one_line_error(exc_info, *parts):
    message = str(exc_info.value)
    assert "\n" not in message and isinstance(exc_info.value, InputError), message
    for part in parts:
        assert str(part) in message, message
    return message


def test_a_good_beton_passes_and_is_counted(beton):
    found = check(loader="ffcv", train=beton, val=beton)
    assert (found.train_images, found.val_images) == (24, 24)


def test_labels_outside_num_classes_name_the_file_and_the_first_bad_label(beton):
    with pytest.raises(DataError) as e:
        check(num_classes=10, loader="ffcv", train=beton)
    one_line_error(e, beton, "image 10 has label 10", "[0, 10)", "model.num_classes=10")


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "empty_file", "truncated", "fifo"])
def test_unusable_beton_files(tmp_path, beton, case):
    from tests.unit.test_files import deadline

    path = tmp_path / "x.beton"
    if case == "directory":
        path.mkdir()
    elif case == "fifo":  # refused, never waited on (issue 25)
        os.mkfifo(path)
    elif case == "garbage":
        path.write_bytes(os.urandom(5000))
    elif case == "empty_file":
        path.write_bytes(b"")
    elif case == "truncated":
        with open(beton, "rb") as f:
            path.write_bytes(f.read(700))
    with deadline(30), pytest.raises(DataError) as e:
        check(loader="ffcv", train=str(path))
    one_line_error(e, path)


def test_missing_val_beton_is_named_with_its_key(beton, tmp_path):
    with pytest.raises(DataError) as e:
        check(loader="ffcv", train=beton, val=str(tmp_path / "val.beton"))
    one_line_error(e, tmp_path / "val.beton", "data.val")


def test_beton_without_the_expected_fields(tmp_path):
    import numpy as np
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    class Pairs:
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return np.zeros((4, 4, 3), np.uint8), i

    path = str(tmp_path / "target.beton")
    DatasetWriter(path, {"image": RGBImageField(), "target": IntField()}, num_workers=1).from_indexed_dataset(Pairs())
    with pytest.raises(DataError) as e:
        check(loader="ffcv", train=path)
    one_line_error(e, path, "no 'label' field", "target (IntField)")


def test_too_few_images_for_one_batch_per_rank(beton):
    cfg = data_cfg(loader="ffcv", train=beton, batch_size=13)
    with pytest.raises(DataError) as e:
        build_loaders(cfg, DistInfo(world_size=2), seed=0, num_classes=12, channels_last=True)
    one_line_error(e, beton, "24 images", "data.batch_size=13 x 2 ranks")


def test_synthetic_smaller_than_a_batch():
    with pytest.raises(DataError) as e:
        build_loaders(data_cfg(loader="synthetic", synthetic_size=10, batch_size=8), DistInfo(world_size=2),
                      seed=0, num_classes=3, channels_last=True)
    one_line_error(e, "data.synthetic_size=10")


def test_image_folder_problems(tmp_path):
    make_image_folder(tmp_path / "train", classes=("a", "b", "c"), per_class=1)
    make_image_folder(tmp_path / "val", classes=("a", "c", "d"), per_class=1)
    with pytest.raises(DataError) as e:
        check(num_classes=2, loader="torchvision", train=str(tmp_path / "train"))
    one_line_error(e, tmp_path / "train" / "c" / "000.png", "has label 2", "[0, 2)")
    with pytest.raises(DataError) as e:
        check(loader="torchvision", train=str(tmp_path / "train"), val=str(tmp_path / "val"))
    one_line_error(e, tmp_path / "val", "classes differ", "'c' vs 'b'")
    with pytest.raises(DataError) as e:
        check(loader="torchvision", train=str(tmp_path / "nope"))
    one_line_error(e, tmp_path / "nope", "no such directory")
    found = check(loader="torchvision", train=str(tmp_path / "train"), val=str(tmp_path / "train"))
    assert (found.train_images, found.val_images) == (3, 3)


def test_torchvision_loader_names_an_image_that_fails_to_decode_in_a_worker(tmp_path):
    make_image_folder(tmp_path / "t", classes=("a",), per_class=4)
    (tmp_path / "t" / "a" / "002.png").write_bytes(b"not a png")
    cfg = data_cfg(loader="torchvision", train=str(tmp_path / "t"), batch_size=2, num_workers=1)
    train, _ = build_loaders(cfg, DistInfo(), seed=0, num_classes=1, channels_last=True)
    with pytest.raises(DataError) as e:
        list(train.epoch(0, 16))
    one_line_error(e, tmp_path / "t" / "a" / "002.png", "unreadable image")


# ---- the data.loader registry: each entry owns its checks (#24 item 2)


def test_a_new_loader_refuses_what_it_does_not_declare(monkeypatch):
    """A loader added to the registry is a valid data.loader at once, and refuses data.decode=gpu and the embedded
    (FFCV) datasets unless it says it takes them."""
    from resnext_dist.config import load_config
    from resnext_dist.data.loaders import LOADERS, Loader

    class Mine(Loader):
        name = "mine"

    monkeypatch.setitem(LOADERS, "mine", Mine())
    assert load_config(None, ["data.loader=mine", "data.train=/d/x", "model.num_classes=3"]).data.loader == "mine"
    with pytest.raises(InputError, match=r"^data.decode=gpu needs data.loader=ffcv .*\(got data.loader=mine,"):
        load_config(None, ["data.loader=mine", "data.train=/d/x", "data.decode=gpu", "model.num_classes=3"])
    with pytest.raises(InputError, match=r"^data.train='embedded:digits/train' is an FFCV dataset"):
        load_config(None, ["data.loader=mine", "data.train=embedded:digits/train"])
    with pytest.raises(InputError, match=r"^data.train is required when data.loader=mine$"):
        load_config(None, ["data.loader=mine"])


def test_the_validation_loader_alone_says_what_is_missing(beton):
    from resnext_dist.data import build_val_loader

    def val(required, **fields):
        return build_val_loader(data_cfg(**fields), DistInfo(), seed=0, num_classes=12, channels_last=True,
                                required=required)

    assert val(False, loader="ffcv", train=beton) is None  # the trainer: no validation
    with pytest.raises(InputError, match=r"^data.val is empty: nothing to evaluate on$"):
        val(True, loader="ffcv", train=beton)
    with pytest.raises(InputError, match=r"^data.val_synthetic_size=0: no validation images$"):
        val(True, loader="synthetic", val_synthetic_size=0)
    assert val(True, loader="ffcv", val=beton).num_images == 24  # data.train is not needed to evaluate

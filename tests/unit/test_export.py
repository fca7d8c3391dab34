"""export/: safetensors + model.json; weights.load rebuilds the model; torchvision loads it strictly; the writer
records class names and class_names_for finds them."""
import json
import os

import pytest
import torch
import torchvision
from safetensors.torch import load_file

from resnext_dist import models, weights
from resnext_dist.config import load_config
from resnext_dist.data.sources import class_names_for, class_names_path
from resnext_dist.errors import InputError
from resnext_dist.weights.export import read_meta, write_export
from tests.data_helpers import make_cifar_folder, make_image_folder
from tests.tiny import TINY


def tiny_cfg(*extra):
    return load_config(None, [*TINY, "data.val_res=20", "data.val_crop_ratio=0.8", *extra])


def test_export_round_trip_rebuilds_the_same_model(tmp_path):
    cfg = tiny_cfg("model.blurpool=true")
    torch.manual_seed(0)
    model = models.build_model(cfg.model)
    model.train()(torch.randn(8, 3, 16, 16))  # move the BN running statistics off their defaults
    model = model.to(memory_format=torch.channels_last)  # stored in the standard layout all the same
    names = [f"c{k}" for k in range(10)]
    out = write_export(model, cfg, str(tmp_path / "export"), class_names=names, extra={"step": 7})
    assert sorted(os.listdir(out)) == ["model.json", "model.safetensors"]  # no temporary files left
    meta = read_meta(out)
    assert meta["arch"] == "resnext50_32x4d" and meta["class_names"] == names and meta["run"] == {"step": 7}
    assert meta["model"]["layers"] == [1, 1, 1, 1] and meta["model"]["stem"] == "cifar"
    assert meta["model"]["blurpool"] is True and "init" not in meta["model"]
    assert "model.base_channels=8" in meta["overrides"] and "model.blurpool=true" in meta["overrides"]
    assert meta["torchvision"] is None
    pre = meta["preprocessing"]
    assert (pre["size"], pre["crop_ratio"], pre["channels"]) == (20, 0.8, "RGB")
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])

    x = torch.randn(3, 3, 16, 16)
    model.eval()
    for path in (out, os.path.join(out, "model.json"), os.path.join(out, "model.safetensors"), str(tmp_path)):
        loaded = weights.load(path)
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), model(x)), path


def test_export_of_ddp_or_ema_wrapped_model_has_plain_keys(tmp_path):
    from torch.optim.swa_utils import AveragedModel
    cfg = tiny_cfg()
    model = models.build_model(cfg.model)
    write_export(AveragedModel(model, use_buffers=True), cfg, str(tmp_path))
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(model.state_dict())


def test_imagenet_preset_export_loads_into_torchvision_strictly(tmp_path):
    cfg = load_config(None, ["model.num_classes=10"])
    torch.manual_seed(0)
    model = models.resnext50_32x4d(num_classes=10)
    write_export(model, cfg, str(tmp_path))
    assert read_meta(str(tmp_path))["torchvision"] == "resnext50_32x4d"
    theirs = torchvision.models.resnext50_32x4d(weights=None, num_classes=10)
    theirs.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(theirs.eval()(x), model.eval()(x), atol=1e-5)


def test_class_names_must_match_num_classes(tmp_path):
    with pytest.raises(InputError, match="3 class names for model.num_classes=10"):
        write_export(models.build_model(tiny_cfg().model), tiny_cfg(), str(tmp_path), class_names=["a", "b", "c"])


def test_weights_of_another_export_are_refused(tmp_path):
    cfg = tiny_cfg()
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_export(models.build_model(cfg.model), cfg, a)
    write_export(models.build_model(cfg.model), cfg, b)
    os.replace(os.path.join(b, "model.safetensors"), os.path.join(a, "model.safetensors"))
    with pytest.raises(InputError, match="not the weights .*model.json describes"):
        weights.load(a)


def test_not_an_export(tmp_path):
    with pytest.raises(InputError, match="no model.json"):
        weights.load(str(tmp_path))
    (tmp_path / "model.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a resnext_dist export description"):
        weights.load(str(tmp_path))


def test_writer_records_class_names_beside_the_beton(tmp_path):
    pytest.importorskip("ffcv")
    from resnext_dist.data.write import main

    folder = tmp_path / "folder"
    make_image_folder(str(folder), classes=("cat", "dog"), per_class=2, size=(8, 8))
    make_cifar_folder(str(tmp_path / "c10"))
    out = {}
    for name, args in (("folder", ["--source", "imagefolder", "--input", str(folder)]),
                       ("cifar", ["--source", "cifar", "--input", str(tmp_path / "c10"), "--split", "val"]),
                       ("digits", ["--source", "digits", "--split", "val", "--size", "8", "--subset", "20"])):
        beton = str(tmp_path / f"{name}.beton")
        assert main([*args, "--output", beton, "--workers", "1"]) == 0
        assert class_names_path(beton) == str(tmp_path / f"{name}.classes.json")
        with open(class_names_path(beton)) as f:
            assert json.load(f)["classes"] == class_names_for(beton)
        out[name] = class_names_for(beton)
    assert out["folder"] == ["cat", "dog"]
    assert out["cifar"] == [f"name{k}" for k in range(10)]
    assert out["digits"] == [str(k) for k in range(10)]


def test_class_names_of_torchvision_specs_and_unrecorded_betons(tmp_path):
    make_image_folder(str(tmp_path / "folder"), classes=("b", "a"), per_class=1, size=(8, 8))
    make_cifar_folder(str(tmp_path / "c10"))
    assert class_names_for(str(tmp_path / "folder")) == ["a", "b"]
    assert class_names_for(str(tmp_path / "c10")) == [f"name{k}" for k in range(10)]
    assert class_names_for("digits:16") == [str(k) for k in range(10)]
    (tmp_path / "old.beton").write_bytes(b"x")
    assert class_names_for(str(tmp_path / "old.beton")) is None
    assert class_names_for("") is None


def test_dataset_class_names_of_a_config(tmp_path):
    from resnext_dist.weights.export import dataset_class_names
    make_image_folder(str(tmp_path / "folder"), classes=("b", "a"), per_class=1, size=(8, 8))
    folder = ["data.loader=torchvision", f"data.train={tmp_path / 'folder'}"]
    assert dataset_class_names(tiny_cfg(*folder, "model.num_classes=2")) == ["a", "b"]
    assert dataset_class_names(tiny_cfg(*folder)) is None  # 2 names for 10 classes: not these weights' names
    assert dataset_class_names(tiny_cfg()) is None  # synthetic

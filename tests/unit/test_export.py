"""export/: safetensors + model.json; weights.load rebuilds the model; torchvision loads it strictly; the writer
records class names and class_names_for finds them."""
import json
import os
import time

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
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
    assert dataset_class_names(tiny_cfg(*folder, "model.num_classes=0")) == ["a", "b"]  # 0: the data's
    with pytest.raises(InputError, match=r"^model.num_classes=10 but data.train='.*folder' has 2 classes \(a, b\)"):
        tiny_cfg(*folder)  # 2 names for 10 classes: refused at load, naming both
    assert dataset_class_names(tiny_cfg()) is None  # synthetic


# ---- an export is data, not instructions (issue 25 item 3): every field anything reads is checked first

def hostile_export(tmp_path, change=None, raw=None):
    """A tiny export, then its model.json changed: `change(meta)` edits the parsed JSON, `raw(text)` the text."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    out = str(tmp_path / "export")
    write_export(models.build_model(cfg.model), cfg, out, class_names=[f"c{k}" for k in range(10)])
    path = os.path.join(out, "model.json")
    with open(path) as f:
        text = f.read()
    if change:
        meta = json.loads(text)
        change(meta)
        text = json.dumps(meta)
    if raw:
        text = raw(text)
    with open(path, "w") as f:
        f.write(text)
    return out


def setter(*keys_and_value):
    *keys, value = keys_and_value

    def change(meta):
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
    return change


HOSTILE = [  # (change, words the one line holds): the variants and the classes they stand for
    (setter("arch", "resnext9000"), "arch 'resnext9000' is not the model's"),
    (setter("model", "arch", "resnext9000"), "model.arch='resnext9000' is not a known preset"),
    (setter("model", "group_width", 100000), "model.group_width=100000: a model of"),
    (setter("model", "layers", [1, 1, 10**9, 1]), "more than this machine's memory"),
    (setter("model", "num_classes", 10**12), "more than this machine's memory"),
    (setter("model", "base_channels", 10**7), "more than this machine's memory"),
    (setter("model", "num_classes", 0), "model.num_classes=0: must be > 0"),
    (setter("model", "layers", [1, 1]), "model.layers=[1, 1]: must be 4 positive block counts"),
    (setter("model", "layers", "[1,1,1,1]"), "model.layers='[1,1,1,1]': must be a list of integers or null"),
    (setter("model", "cardinality", 2.5), "model.cardinality=2.5: must be an integer or null"),
    (setter("model", "cardinality", True), "model.cardinality=True: must be an integer or null"),
    (setter("model", "stem", None), "model.stem=None: must be text"),
    (setter("model", "stem", "imagenet; rm -rf ~"), "model.stem="),
    (setter("model", "blurpool", "yes"), "model.blurpool='yes': must be true or false"),
    (setter("model", "init", "/etc/passwd"), "model keys this resnext_dist does not know: init"),
    (lambda m: m["model"].pop("num_classes"), "model keys missing: num_classes"),
    (setter("preprocessing", "crop_ratio", 0), "preprocessing: data.val_crop_ratio=0: must be in [0.25, 1]"),
    (setter("preprocessing", "crop_ratio", -1.0), "data.val_crop_ratio=-1.0"),
    (setter("preprocessing", "size", 0), "preprocessing: data.val_res=0: must be in [1, 4096] px"),
    (setter("preprocessing", "size", 10**6), "data.val_res=1000000"),
    (setter("preprocessing", "size", "224"), "data.val_res='224': must be an integer"),
    (setter("preprocessing", "mean", [0.5, 0.5]), "preprocessing.mean [0.5, 0.5]: must be 3 numbers in [0.0, 1]"),
    (setter("preprocessing", "mean", [0.5, 2, 0.5]), "preprocessing.mean"),
    (setter("preprocessing", "std", [0, 0.2, 0.2]), "preprocessing.std [0, 0.2, 0.2]: must be 3 numbers in [0.01, 1]"),
    (setter("preprocessing", "std", [1e-30, 0.2, 0.2]), "preprocessing.std"),
    (setter("preprocessing", "std", ["0.2", 0.2, 0.2]), "preprocessing.std"),
    (setter("preprocessing", "channels", "BGR"), "preprocessing.channels 'BGR': must be 'RGB'"),
    (setter("preprocessing", "layout", "NHWC"), "preprocessing.layout"),
    (setter("preprocessing", None), "preprocessing must be a mapping"),
    (setter("class_names", ["a", "b"]), "2 class names for the classifier's 10 classes"),
    (setter("class_names", "abc"), "class_names that are not a list"),
    (setter("class_names", [str(k) for k in range(9)] + [7]), "class name 9 must be printable text"),
    (setter("class_names", [str(k) for k in range(9)] + ["x\n\x1b[2J"]), "class name 9 must be printable text"),
    (setter("weights", "../../outside.safetensors"), "must be a .safetensors file name inside the export folder"),
    (setter("weights", "/etc/passwd"), "weights '/etc/passwd'"),
    (setter("weights", None), "weights 'None'"),
    (setter("version", "1"), "version '1': must be a positive integer"),
    (setter("version", 99), "export version 99 is newer"),
    (setter("sha256", "x" * 64), "sha256"),
    (setter("overrides", ["model.arch=x; rm -rf ~\n"]), "overrides must be a list of model.KEY=VALUE texts"),
    (setter("torchvision", "os.system"), "torchvision 'os.system': must be null or one of"),
    (setter("model", []), "not a resnext_dist export description"),
    (lambda m: m.clear(), "not a resnext_dist export description"),
]


@pytest.mark.parametrize("change, words", HOSTILE)
def test_a_hostile_model_json_is_one_line_naming_it_before_anything_is_built(tmp_path, change, words):
    from resnext_dist.predict import load_predictor

    out = hostile_export(tmp_path, change)
    for load in (weights.load, load_predictor):
        t0 = time.monotonic()
        with pytest.raises(InputError) as e:
            load(out)
        message = str(e.value)
        assert message.startswith(os.path.join(out, "model.json") + ": ") and "\n" not in message, message
        assert words in message, message
        assert time.monotonic() - t0 < 5  # refused from the numbers: no 1.4 TB allocation, no model built


@pytest.mark.parametrize("raw, words", [
    (lambda t: t.replace('"crop_ratio": 0.8', '"crop_ratio": NaN'), "NaN is not a number JSON allows"),
    (lambda t: t.replace('"size": 20', '"size": Infinity'), "Infinity is not a number JSON allows"),
    (lambda t: t[: len(t) // 2], "unreadable export description"),
    (lambda t: "\x00\xff" * 10, "unreadable export description"),
    (lambda t: "[1]", "not a resnext_dist export description"),
    (lambda t: "[" * 100000 + "]" * 100000, "unreadable export description"),
    (lambda t: t.replace('"stem": "cifar"', '"stem": "' + "x" * 10**6 + '"'), "model.stem='xxx"),
])
def test_a_model_json_that_is_no_json_we_write_is_refused(tmp_path, raw, words):
    out = hostile_export(tmp_path, raw=raw)
    with pytest.raises(InputError, match=words) as e:
        weights.load(out)
    assert len(str(e.value)) < 1000 and "\n" not in str(e.value)


def test_weights_only_from_inside_the_export_folder_and_never_larger_than_the_model(tmp_path):
    out = hostile_export(tmp_path)
    inside, outside = os.path.join(out, "model.safetensors"), str(tmp_path / "elsewhere.safetensors")
    os.replace(inside, outside)
    os.symlink(outside, inside)  # a link out of export/
    with pytest.raises(InputError, match="weights 'model.safetensors' lead out of the export folder"):
        weights.load(out)
    os.remove(inside)
    os.replace(outside, inside)
    weights.load(out)  # the same file, inside: fine
    with open(inside, "r+b") as f:  # 10 GB, sparse: refused by its size, never read
        f.truncate(10 * 2**30)
    t0 = time.monotonic()
    with pytest.raises(InputError, match=r"model.safetensors: 10737418240 bytes, more than the \d+ its model can"):
        weights.load(out)
    assert time.monotonic() - t0 < 5


@pytest.mark.parametrize("name", ["model.json", "model.safetensors"])
def test_an_export_file_that_is_a_fifo_is_refused_never_waited_on(tmp_path, name):
    from tests.unit.test_files import deadline
    out = hostile_export(tmp_path)
    os.remove(os.path.join(out, name))
    os.mkfifo(os.path.join(out, name))
    with deadline(), pytest.raises(InputError, match=f"{name}: a FIFO, not a regular file"):
        weights.load(out)


HOSTILE_VALUES = [None, True, -1, 0, 2**62, 1e308, -0.0, "", "x", "../../etc/passwd", [], {}, [1, 2, 3], [[]]]


def leaves(node, where=()):
    """Every place of a JSON document: each container and each value in it (lists by their first element)."""
    yield where
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, where + (k,))
    elif isinstance(node, list) and node:
        yield from leaves(node[0], where + (0,))


def test_no_value_anywhere_in_model_json_ends_in_anything_but_a_line_or_a_working_model(tmp_path):
    """The class, not the examples: every place of model.json takes each hostile value in turn; predict either
    refuses it in one line naming model.json or gets a model that classifies (never a traceback, a hang or a
    huge allocation)."""
    from resnext_dist.predict import load_predictor, predict
    Image.fromarray(np.zeros((9, 7, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    out = hostile_export(tmp_path / "base")
    with open(os.path.join(out, "model.json")) as f:
        original = json.load(f)
    outcomes = {"refused": 0, "loaded": 0}
    for where in leaves(original):
        for value in HOSTILE_VALUES:
            meta = json.loads(json.dumps(original))
            if where:
                setter(*where, value)(meta)
            else:
                meta = value
            with open(os.path.join(out, "model.json"), "w") as f:
                json.dump(meta, f)
            t0 = time.monotonic()
            try:
                p = load_predictor(out)
            except InputError as e:  # model.json, or the weights it names that do not fit what it says
                assert str(e).startswith(out + os.sep) and "\n" not in str(e), (where, value, str(e))
                outcomes["refused"] += 1
                continue
            finally:
                assert time.monotonic() - t0 < 5, (where, value)
            top = predict(p, [str(tmp_path / "img.png")], top_k=3)[0]["top"]
            assert len(top) == 3 and all(0 <= t["prob"] <= 1 for t in top), (where, value)
            outcomes["loaded"] += 1  # a valid value: a flag, a class name, a preset's own default
    assert outcomes["refused"] > 20 * outcomes["loaded"] > 0, outcomes

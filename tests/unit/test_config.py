"""The typed config: recipes, overrides, and one clear error per kind of bad input."""
import subprocess
import sys

import pytest
import yaml

from resnext_dist.errors import InputError

from resnext_dist.config import TrainConfig, grad_accum_steps, load_config, to_flat_dict, to_yaml, validate

RECIPES = ["configs/quickstart.yaml", "configs/resnext50_imagenet.yaml", "configs/resnext101_imagenet.yaml",
           "configs/resnext152_imagenet.yaml", "configs/cifar100_resnext50.yaml"]
DATA = ["data.train=/d/train.beton", "data.val=/d/val.beton"]


def test_defaults_are_typed_dataclasses():
    cfg = load_config(None, [])
    assert isinstance(cfg, TrainConfig)
    assert cfg.run.name == "run" and cfg.run.dir == "runs/run"
    assert type(cfg.model).__name__ == "ModelConfig"


def test_overrides_are_typed_and_interpolations_resolve():
    cfg = load_config(None, ["data.batch_size=64", "model.layers=[1,1,1,1]", "run.name=x", "optim.lr=0.5"])
    assert cfg.data.batch_size == 64 and cfg.model.layers == [1, 1, 1, 1] and cfg.optim.lr == 0.5
    assert cfg.run.dir == "runs/x" and cfg.slurm.folder == "runs/x/slurm"


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_loads_with_only_data_paths(recipe):
    cfg = load_config(recipe, DATA if "quickstart" not in recipe else [])
    assert cfg.run.name == recipe.split("/")[-1][: -len(".yaml")]


def test_imagenet_recipes_require_data_paths():
    with pytest.raises(InputError, match="data.train is required when data.loader=ffcv"):
        load_config("configs/resnext50_imagenet.yaml", [])


@pytest.mark.parametrize("overrides, message", [
    (["data.batch_sise=3"], r"unknown config key 'data.batch_sise' in command line \(did you mean data.batch_size\?\)"),
    (["modle.arch=x"], r"unknown config key 'modle' .*did you mean model"),
    (["data.batch_size=abc"], r"'data.batch_size'.*'abc'.*Integer"),
    (["train.channels_last=maybe"], r"'train.channels_last'.*maybe"),
    (["optim.lr=0"], r"optim.lr=0.0: must be > 0"),
    (["optim.lr=-1"], r"optim.lr=-1.0: must be > 0"),
    (["model.arch=resnext51"], r"model.arch='resnext51'.*did you mean resnext50_32x4d"),
    (["train.precision=fp8"], r"train.precision='fp8': must be one of bf16, fp16, fp32"),
    (["data.loader=ffcv"], r"data.train is required when data.loader=ffcv"),
    (["model.layers=[1,1,1]"], r"model.layers=\[1, 1, 1\]: must be 4"),
    (["data.batch_size=0"], r"data.batch_size=0: must be > 0"),
    (["checkpoint.resume=/no/such.pt"], r"checkpoint.resume='/no/such.pt': no such checkpoint file"),
    (["noequals"], r"override 'noequals' is not key=value"),
])
def test_bad_input_is_one_clear_line(overrides, message):
    with pytest.raises(InputError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)


def test_unknown_key_in_a_yaml_file_names_the_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  batchsize: 3\n")
    with pytest.raises(InputError, match=r"unknown config key 'data.batchsize' in .*bad.yaml \(did you mean data.batch_size"):
        load_config(str(p), [])


def test_global_batch_must_divide_by_world_size():
    cfg = load_config(None, ["data.batch_size=32", "optim.global_batch_size=96"])
    assert grad_accum_steps(cfg, 1) == 3
    with pytest.raises(InputError, match=r"optim.global_batch_size=96 is not a multiple of data.batch_size=32 x world size 2"):
        validate(cfg, world_size=2)
    cfg = load_config(None, ["data.batch_size=32", "optim.global_batch_size=128"])
    assert grad_accum_steps(cfg, 2) == 2


def test_yaml_round_trip_and_flat_dict():
    cfg = load_config("configs/quickstart.yaml", ["train.epochs=3"])
    text = to_yaml(cfg)
    assert yaml.safe_load(text)["train"]["epochs"] == 3
    flat = to_flat_dict(cfg)
    assert flat["train.epochs"] == 3 and "model.arch" in flat


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "resnext_dist.train", *args], capture_output=True, text=True)


def test_cli_print_config_and_help():
    r = run_cli("--config", "configs/quickstart.yaml", "--print-config", "train.epochs=7")
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["train"]["epochs"] == 7
    r = run_cli("--help")
    assert r.returncode == 0 and "data.batch_size" in r.stdout and "images per process" in r.stdout


def test_cli_bad_key_exits_2_with_one_line():
    r = run_cli("--config", "configs/quickstart.yaml", "data.batch_sise=3")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "data.batch_sise" in r.stderr

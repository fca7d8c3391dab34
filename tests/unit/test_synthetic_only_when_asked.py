"""Synthetic data only when asked for (issue 26): a config that trains, with data.loader=auto (the default) and no
data.train, is one line naming data.train and exit 2, not a run on random images; data.loader=synthetic asks."""
import glob
import os
import subprocess

import pytest
from omegaconf import OmegaConf

from resnext_dist.config import arguments as cli
from resnext_dist.config import load_config
from resnext_dist.errors import InputError
from tests.tiny import PYTHON, REPO, env

MESSAGE = "data.train is empty: set data.train=PATH, or data.loader=synthetic for random images"


def parse(*argv):
    return cli.arg_parser("resnext_dist.train", "Train.", "").parse_args(list(argv))


@pytest.fixture
def no_data(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("model: {layers: [1, 1, 1, 1], cardinality: 2, group_width: 4, base_channels: 8}\n")
    return str(path)


def test_a_recipe_without_data_is_refused_naming_data_train(no_data):
    with pytest.raises(InputError) as e:
        cli.load_train_config(parse("--config", no_data))
    assert str(e.value) == MESSAGE
    with pytest.raises(InputError, match="^data.train is empty"):
        cli.load_train_config(parse("--config", no_data, "data.loader=auto"))


def test_random_images_when_asked_for(no_data):
    cfg, _ = cli.load_train_config(parse("--config", no_data, "data.loader=synthetic"))
    assert cfg.data.loader == "synthetic" and cfg.data.train == ""
    # a library caller that trains nothing (a bench's model, a test's config) still gets a config
    assert load_config(no_data).data.loader == "synthetic"


def test_the_train_command_exits_2_with_one_line(no_data, tmp_path):
    r = subprocess.run([PYTHON, "-m", "resnext_dist.train", "--config", no_data, f"run.root={tmp_path}"], cwd=REPO,
                       env=env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {MESSAGE}", r.stderr[-2000:]
    assert os.listdir(tmp_path) == ["mine.yaml"]  # nothing written


@pytest.mark.parametrize("recipe", sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml"))))
def test_every_recipe_names_its_data_or_its_loader(recipe):
    data = OmegaConf.load(recipe).get("data") or {}
    assert data.get("train") or data.get("loader") not in (None, "auto"), recipe

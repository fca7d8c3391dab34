"""The V2 recipes (torchvision's new recipe): each loads and prints with its augmentations, validation 232 -> 224
and its published figure in the file; the ResNeXt-101 one (a superset: train crop 176, repeated augmentation x4)
runs a few steps at a tiny size, with optim.loss=bce and optim.optimizer=adamw (the trainer must take them too)."""
import os
import subprocess

import pytest

from resnext_dist.config import load_config
from resnext_dist.runlog import read_log
from tests.tiny import PYTHON, REPO, TINY, env, train_cmd

V2 = {"configs/resnext50_imagenet_v2.yaml": ("81.198%", 1, 224, 600),
      "configs/resnext101_64x4d_imagenet_v2.yaml": ("83.246%", 4, 176, 150)}
DATA = ["data.train=/d/train.beton", "data.val=/d/val.beton"]


@pytest.mark.parametrize("recipe", sorted(V2))
def test_a_v2_recipe_loads_and_prints_the_v2_settings(recipe):
    published, reps, train_res, epochs = V2[recipe]
    assert f"Published: {published} top-1 (torchvision)" in open(os.path.join(REPO, recipe)).read()
    cfg = load_config(recipe, DATA)
    d, o = cfg.data, cfg.optim
    assert (d.auto_augment, d.random_erasing, d.mixup_alpha, d.cutmix_alpha) == ("trivialaugment", 0.1, 0.2, 1.0)
    assert (d.ra_reps, d.train_res, cfg.train.epochs) == (reps, train_res, epochs)
    assert round(d.val_res / d.val_crop_ratio) == 232 and d.val_res == 224
    assert o.lr * o.global_batch_size / 256 == 0.5 and o.weight_decay == 2e-5 and o.label_smoothing == 0.1
    assert o.warmup_epochs * reps == 5
    r = subprocess.run([PYTHON, "-m", "resnext_dist.train", "--config", recipe, "--print-config", *DATA], cwd=REPO,
                       env=env(), capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "auto_augment: trivialaugment" in r.stdout and f"ra_reps: {reps}" in r.stdout


def test_the_resnext101_v2_recipe_runs_a_few_steps_at_a_tiny_size(tmp_path):
    cmd = train_cmd(1, ["--config", "configs/resnext101_64x4d_imagenet_v2.yaml", *TINY, f"run.dir={tmp_path}/run",
                        "optim.global_batch_size=16", "train.max_steps=3", "train.log_every_steps=1",
                        "optim.loss=bce", "optim.optimizer=adamw"])  # and the RSB-style loss and optimizer train
    r = subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    losses = [x["loss"] for x in read_log(tmp_path / "run" / "log.jsonl") if x["kind"] == "step"]
    assert len(losses) == 3 and all(0 < loss < 100 for loss in losses)
    assert "  augment   trivialaugment, erasing 0.1, mixup 0.2 | cutmix 1.0, ra x4\n" in r.stdout  # the banner


@pytest.mark.parametrize("epochs, published", [(16, "73.8%"), (88, "78.4%")])
def test_the_ffcv_style_short_recipes_load_with_progressive_resizing_and_a_higher_test_resolution(epochs, published):
    recipe = f"configs/resnext50_imagenet_ffcv{epochs}.yaml"
    assert f"ResNet-50, not ResNeXt-50: FFCV, 8xA100): {published}" in open(os.path.join(REPO, recipe)).read()
    cfg = load_config(recipe, DATA)
    d = cfg.data
    assert (d.min_train_res, d.train_res, d.val_res, cfg.train.epochs) == (160, 192, 256, epochs)
    assert d.ramp_start_epoch < d.ramp_end_epoch < epochs and cfg.train.tta_flip and cfg.model.blurpool
    assert cfg.optim.lr * cfg.optim.global_batch_size / 256 == pytest.approx(1.7)

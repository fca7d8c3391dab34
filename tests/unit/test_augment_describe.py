"""The banner names the training augmentations (data/augment.py's describe, the `augment` row of the banner)."""
from resnext_dist.config import DataConfig
from resnext_dist.data.augment import describe
from resnext_dist.run.console import banner

START = {"version": "0", "run_name": "r", "run_dir": "/r", "world_size": 1, "nodes": 1, "backend": "gloo",
         "device": "cpu", "arch": "resnext50", "stem": "imagenet", "parameters": 1e6, "num_classes": 10,
         "loader": "ffcv", "train_images": 10, "val_images": 2, "train_res": 176, "val_res": 224, "batch_size": 8,
         "accum_steps": 1, "global_batch": 8, "steps_per_epoch": 1, "epochs": 1, "total_steps": 1,
         "precision": "bf16", "channels_last": True, "compile": False, "optimizer": "SGD", "peak_lr": 0.5,
         "lr": 0.5, "scale_lr": False, "warmup_epochs": 5, "schedule": "cosine", "weight_decay": 2e-5,
         "label_smoothing": 0.1}


def test_the_v2_recipes_augmentations_in_words():
    v2 = DataConfig(auto_augment="trivialaugment", random_erasing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0, ra_reps=4)
    assert describe(v2) == "trivialaugment, erasing 0.1, mixup 0.2 | cutmix 1.0, ra x4"
    assert describe(DataConfig(auto_augment="randaugment", cutmix_alpha=1.0)) == "randaugment, cutmix 1.0"
    assert describe(DataConfig(ra_reps=2)) == "ra x2"
    assert describe(DataConfig()) == ""  # nothing when none
    assert "augment   trivialaugment, erasing 0.1, mixup 0.2 | cutmix 1.0, ra x4\n" in banner(
        {**START, "augment": describe(v2)})


def test_the_banner_has_no_augment_row_without_augmentations():
    assert "augment" not in banner({**START, "augment": describe(DataConfig())})

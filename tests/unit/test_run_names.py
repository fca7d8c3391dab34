"""Default run names say what differs from the recipe and stay unique (issue 26, bullet 4): config/naming.py,
one rule for train, launch/quickstart.py, launch/submit.py and sweeps."""
import importlib.util
import os
import re

from resnext_dist.config import arguments as cli
from resnext_dist.config import load_config
from resnext_dist.config.identity import identity_hash
from resnext_dist.config.naming import MAX_LABEL, label
from resnext_dist.slurm.grid import run_name as sweep_run_name
from tests.data_helpers import make_image_folder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART = os.path.join(REPO, "configs", "quickstart.yaml")
def trainer_parser():  # as resnext_dist.train makes it (tests/unit/test_cli.py)
    return cli.arg_parser("resnext_dist.train", "Train.", "data.batch_size=128")


SAFE = re.compile(r"[A-Za-z0-9._=+-]+\Z")  # a directory name anywhere, an MLflow run name as typed


def name(*overrides, path=QUICKSTART):
    return load_config(path, list(overrides)).run.name


def test_the_overridden_identity_keys_name_the_run_then_its_identity_hash():
    cfg = load_config(QUICKSTART, ["optim.lr=0.2", "optim.global_batch_size=64"])
    assert cfg.run.name == f"quickstart-lr0.2-gbs64-{identity_hash(cfg)}"
    assert cfg.run.dir == f"runs/{cfg.run.name}"  # the run directory follows the name (and MLflow's run name: it is
    assert name() == "quickstart-996f84c3"        # run.name); no override: the name runs had before
    assert name("model.layers=[1,1,2,1]", "model.arch=resnext101_32x8d").startswith(
        "quickstart-arch_resnext101_32x8d-layers1x1x2x1-")  # the schema's order; words set off by '_'


def test_only_what_differs_from_the_recipe_and_makes_another_run_is_named():
    base = name()
    assert name("optim.lr=1.0") == base  # the recipe's own value
    assert name("train.epochs=20", "data.num_workers=3", "tracking.enabled=false") == base  # not the identity
    assert name("optim.lr=0.2", "train.epochs=20") == name("optim.lr=0.2")  # a longer run finds the same directory


def test_a_key_that_follows_the_data_is_not_named_the_data_is(tmp_path):
    make_image_folder(str(tmp_path / "shapes"), per_class=1)
    auto = name(f"data.train={tmp_path / 'shapes'}", "data.val=''")
    said = name(f"data.train={tmp_path / 'shapes'}", "data.val=''", "data.loader=torchvision", "model.num_classes=3")
    assert auto == said and auto.startswith("quickstart-train_shapes-") and "loader" not in auto
    assert "nc" not in auto.split("-")[1:-1]


def test_names_stay_unique_bounded_and_safe_when_the_label_is_cut():
    many = ["model.arch=resnext101_32x8d", "model.layers=[1,1,2,1]", "optim.weight_decay=1e-4", "train.seed=1",
            "data.train_res=32", "optim.lr=0.3"]
    a, b = name(*many, "optim.label_smoothing=0.1"), name(*many, "optim.label_smoothing=0.2")  # ls: cut from both
    assert a != b and a.split("-")[:-1] == b.split("-")[:-1]  # the hash tells them apart
    for n in (a, b):
        assert SAFE.match(n) and len(n) <= len("quickstart-") + MAX_LABEL + 9, n
        assert re.search(r"\+[0-9]+-[0-9a-f]{8}\Z", n), n  # +N: how many more keys differ
    odd = name("optim.optimizer=adamw", f"data.stage_dir={os.sep}tmp{os.sep}a b", "optim.lr=0.25")
    assert SAFE.match(odd), odd
    assert label({"data.train": "/data/my set/train.beton", "optim.lr": 0.1}) == "train_train-lr0.1"


def test_every_launcher_names_a_run_alike():
    """The train command, launch/quickstart.py, launch/submit.py (all through load_config) and a sweep's runs
    (the same label)."""
    overrides = ["optim.lr=0.2", "train.seed=3"]
    by_train = cli.load_train_config(trainer_parser().parse_args(["--config", "quickstart", *overrides]))[0]
    spec = importlib.util.spec_from_file_location("quickstart_launcher", os.path.join(REPO, "launch", "quickstart.py"))
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    assert by_train.run.name == quickstart.load(overrides).run.name == name(*overrides)
    assert by_train.run.name.startswith("quickstart-seed3-lr0.2-")  # the schema's order: train before optim
    assert sweep_run_name({"optim.lr": "0.2", "train.seed": "3"}) == "lr0.2-seed3"  # inside the sweep's directory


def test_submit_names_the_run_directory_alike(tmp_path, capsys):
    from resnext_dist.submit import main
    assert main(["--dry-run", "--config", "quickstart", "optim.lr=0.2", f"run.root={tmp_path}"]) == 0
    assert f"{tmp_path}/{name('optim.lr=0.2')}/slurm/" in capsys.readouterr().out

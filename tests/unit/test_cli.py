"""The shared command line: fast --help, --version, usage as typed, unknown --options, which keys each help lists,
--config NAME and the embedded default."""
import os
import subprocess
import sys

import pytest

from resnext_dist import commandline
from resnext_dist.config import arguments as cli
from resnext_dist.config import find_config
from resnext_dist.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def py(*args, **kw):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kw)


def trainer_parser():
    return cli.arg_parser("resnext_dist.train", "Train.", "data.batch_size=128")


# ---- no torch before it is needed


def test_the_command_line_modules_import_no_torch():
    r = py("-c", "import sys, resnext_dist, resnext_dist.commandline, resnext_dist.config, resnext_dist.config.arguments, resnext_dist.config.checks, "
                 "resnext_dist.config.credentials, resnext_dist.data.embedded\n"
                 "assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr


def test_loading_and_checking_a_recipe_imports_no_torch():
    """Every value checked, the registries' checks included (data loader, optimizer, model preset): a config error
    answers before torch is imported."""
    r = py("-c", "import sys; from resnext_dist.config import load_config\n"
                 "load_config('configs/quickstart.yaml', ['optim.schedule=step', 'train.precision=fp16'])\n"
                 "assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr


def _imports_torch(args):
    r = py("-X", "importtime", *args)
    modules = {line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    return r, "torch" in modules


def test_the_trainers_help_imports_no_torch():
    r, torch_imported = _imports_torch(["-m", "resnext_dist.train", "--help"])
    assert r.returncode == 0 and "config keys:" in r.stdout
    assert not torch_imported


# ---- --version, usage lines


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as e:
        trainer_parser().parse_args(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip().endswith(" " + commandline.version())
    assert commandline.version()[0].isdigit()


@pytest.mark.parametrize("argv0, shown", [
    ("/venv/bin/resnext-train", "resnext-train"),                                   # the console script
    (os.path.join(REPO, "resnext_dist", "train.py"), "python -m resnext_dist.train"),  # -m (and under torchrun)
    (os.path.join(REPO, "resnext_dist", "__main__.py"), "python -m resnext_dist"),
    ("-c", "python -m resnext_dist.train"),
    ("launch/other.py", "python launch/other.py"),
])
def test_usage_names_the_command_as_typed(argv0, shown):
    assert commandline.command_name("resnext_dist.train", argv0) == shown


def test_usage_line_of_a_real_command():
    r = py("launch/submit.py", "--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: python launch/submit.py ")


# ---- unknown --options


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "3"], "unknown option --epochs; did you mean train.epochs=3?"),
    (["--lr", "0.1"], "unknown option --lr; did you mean optim.lr=0.1?"),
    (["--lr=0.1"], "unknown option --lr; did you mean optim.lr=0.1?"),
    (["--batch-size", "64", "train.epochs=2"], "unknown option --batch-size; did you mean data.batch_size=64?"),
    (["--optim.momentum", "0.8"], "unknown option --optim.momentum; did you mean optim.momentum=0.8?"),
    (["--compile"], "unknown option --compile; did you mean train.compile=...?"),
    (["--zzqx", "1"], "unknown option --zzqx; config values are given as key=value (see --help)"),
])
def test_an_unknown_option_suggests_the_config_key(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        trainer_parser().parse_args(argv)
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {message}\n"


def test_the_trainer_never_suggests_a_slurm_key_but_the_submitter_does(capsys):
    with pytest.raises(SystemExit):
        trainer_parser().parse_args(["--nodes", "2"])
    assert "slurm." not in capsys.readouterr().err
    submit = cli.arg_parser("resnext_dist.slurm", "Submit.", "slurm.nodes=2", sections=cli.all_sections())
    with pytest.raises(SystemExit):
        submit.parse_args(["--nodes", "2"])
    assert "did you mean slurm.nodes=2?" in capsys.readouterr().err


def test_an_unknown_option_from_the_real_command_line():
    r = py("-m", "resnext_dist.train", "--epochs", "3")
    assert r.returncode == 2
    assert r.stderr == "error: unknown option --epochs; did you mean train.epochs=3?\n"


# ---- what --help lists


def test_the_trainers_help_lists_its_keys_and_the_submitters_adds_slurm():
    trainer = trainer_parser().format_help()
    assert "train.epochs = 90" in trainer and "optim.lr = 0.1" in trainer
    assert "slurm." not in trainer
    submit = cli.arg_parser("resnext_dist.slurm", "Submit.", "slurm.nodes=2", sections=cli.all_sections())
    assert "slurm.gpus_per_node = 8" in submit.format_help() and "train.epochs = 90" in submit.format_help()


def test_run_name_reads_as_the_config_files_name():
    text = trainer_parser().format_help()
    assert ("run.name = <the recipe's name>-<the identity keys set otherwise, e.g. lr0.2>-<a hash of the identity "
            "keys> (no --config: quickstart-") in text
    assert "(required)" not in text


def test_the_writers_help_has_no_default_none_noise():
    from resnext_dist.data import write
    text = write.parser().format_help()
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: )" not in text
    assert "(default: 90)" in text  # a default that says something is still shown


# ---- --config NAME and the embedded default


def test_config_by_name_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_config("quickstart") == os.path.join(REPO, "configs", "quickstart.yaml")
    assert find_config("resnext50_imagenet").endswith("configs/resnext50_imagenet.yaml")
    (tmp_path / "mine.yaml").write_text("train:\n  epochs: 1\n")
    assert find_config("mine.yaml") == "mine.yaml"  # a path is a path
    with pytest.raises(InputError, match=r"--config quickstrat: .*\(did you mean quickstart\?\); recipes: "):
        find_config("quickstrat")


def test_no_config_is_the_embedded_default_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from anywhere: the recipe and its data do not depend on the directory
    cfg, note = cli.load_train_config(trainer_parser().parse_args(["train.epochs=3"]))
    assert note == ("no --config: training the embedded default (digits quickstart); "
                    "for ImageNet use --config configs/resnext50_imagenet.yaml")
    assert (cfg.data.loader, cfg.data.train, cfg.data.val) == ("ffcv", "embedded:digits/train", "embedded:digits/val")
    assert cfg.model.num_classes == 10 and cfg.train.epochs == 3 and cfg.run.name.startswith("quickstart-")
    cfg, note = cli.load_train_config(trainer_parser().parse_args(["--config", "quickstart"]))
    assert note is None and cfg.train.epochs == 8


def test_default_run_names_keep_experiments_apart_and_find_the_same_run_again():
    """<recipe>-<hash of the identity keys>: another lr is another run directory; the same command, a longer run
    (train.epochs) or another placement (workers, tracking) is the same one."""
    name = lambda *o: cli.load_train_config(trainer_parser().parse_args(["--config", "quickstart", *o]))[0].run.name
    base = name()
    assert base.startswith("quickstart-") and len(base) == len("quickstart-") + 8
    assert name() == base
    assert name("train.epochs=20", "data.num_workers=3", "tracking.enabled=false") == base
    assert name("model.sync_bn=false", "model.blurpool=false") == base  # at their defaults, as a key added later is
    assert len({base, name("optim.lr=0.5"), name("train.seed=1"), name("model.layers=[1,1,2,1]")}) == 4
    assert name("run.name=mine") == "mine"


def test_the_embedded_default_takes_the_tiny_test_overrides():
    """Trainer tests run `python -m resnext_dist.train <TINY>` without --config: the default recipe must take them."""
    from tests.tiny import TINY
    cfg, _ = cli.load_train_config(trainer_parser().parse_args(TINY))
    assert cfg.data.loader == "synthetic" and cfg.model.layers == [1, 1, 1, 1]

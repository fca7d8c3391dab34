"""The README's and docs/performance.md's commands run as written: every benchmark, data-writer and training
command line in them parses with today's flags and config keys (a renamed flag or key fails here, not for the
user who copies it)."""
import importlib
import re
import shlex
from pathlib import Path

import pytest

from resnext_dist import train
from resnext_dist import submit as submit_command
from resnext_dist.slurm import submit as slurm_submit
from resnext_dist.slurm import sweep as slurm_sweep
from resnext_dist.config.arguments import load_train_config
from resnext_dist.config import find_config, load_config

ROOT = Path(__file__).resolve().parents[2]


DOCS = ("README.md", "docs/performance.md")


def readme_commands(entry: str):
    """The arguments of every command in the README (and docs/performance.md) that runs `entry` (`-m module` as
    python and torchrun write it, or a script path): inline code and bash blocks (continuations joined, comments
    dropped). Placeholders (`...`, $VARS, {a,b}) are not runnable as written and are skipped, and so is a
    command the text gives "as run: " on an earlier day, in the syntax of that day."""
    found = []
    for name in DOCS:
        text = (ROOT / name).read_text()
        found += [m.group(1) for m in re.finditer(r"(?<!`)`([^`\n]*(?:-m resnext_dist|launch/)[^`\n]*)`(?!`)", text)
                  if not text[:m.start()].endswith("as run: ")]
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():
                found.append(line.split("  #")[0].strip())
    prefix = entry + " "
    out = []
    for cmd in found:
        at = cmd.find(prefix)
        if at < 0 or any(p in cmd for p in ("...", "$", "{")):
            continue
        out.append(shlex.split(cmd[at + len(prefix):]))
    return out


BENCH = readme_commands("-m resnext_dist.bench")
WRITE = readme_commands("-m resnext_dist.data.write")
TRAIN = readme_commands("-m resnext_dist.train")
SUBMIT = readme_commands("launch/submit.py")


@pytest.fixture
def readme_dir(tmp_path, monkeypatch):
    """A working directory as the README's reader has it: the recipes (configs/), and the data the commands name
    in it (a bench.beton with the class names its writer records, the own-data section's ImageFolder): the class
    count is read from the data when the config loads."""
    import os

    from resnext_dist.data.sources import write_class_names
    from tests.data_helpers import make_image_folder
    os.symlink(ROOT / "configs", tmp_path / "configs")
    (tmp_path / "bench.beton").write_bytes(b"")
    write_class_names(str(tmp_path / "bench.beton"), [str(k) for k in range(10)])
    for split in ("train", "val"):
        make_image_folder(str(tmp_path / "shapes" / split), per_class=1, size=(8, 8))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_the_readme_has_commands_to_check():
    # the extraction itself works
    assert len(BENCH) >= 5 and len(WRITE) >= 4 and len(TRAIN) >= 2 and len(SUBMIT) >= 1


@pytest.mark.parametrize("argv", BENCH, ids=[" ".join(a)[:60] for a in BENCH])
def test_bench_command_parses_and_loads_its_config(argv, readme_dir):
    sub, rest = argv[0], argv[1:]
    args = importlib.import_module(f"resnext_dist.bench.{sub}").parser().parse_intermixed_args(rest)  # SystemExit(2)
    if sub != "report":  # the trainer's --config and key=value, checked as the trainer checks them
        load_config(args.config, [*args.overrides, *(["data.loader=synthetic"] if sub != "train" else [])])


@pytest.mark.parametrize("argv", WRITE, ids=[" ".join(a)[:60] for a in WRITE])
def test_data_write_command_parses(argv):
    importlib.import_module("resnext_dist.data.write").parser().parse_args(argv)


@pytest.mark.parametrize("argv", TRAIN, ids=[" ".join(a)[:60] for a in TRAIN])
def test_train_command_loads_its_config(argv, readme_dir):  # recipes are named relative to the repository
    if "--help" in argv:
        with pytest.raises(SystemExit) as e:
            train.parse_args(argv)
        assert e.value.code == 0
        return
    args = train.parse_args(argv)
    load_train_config(args)  # as the trainer loads it (--config NAME, no --config); InputError names a bad key


@pytest.mark.parametrize("argv", SUBMIT, ids=[" ".join(a)[:60] for a in SUBMIT])
def test_submit_command_loads_its_config(argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    args = submit_command.parse_args(argv)
    slurm_submit.check_slurm_config(load_config(find_config(args.config), args.overrides))  # nothing is submitted
    if args.sweep:  # and every run of a sweep, as submit.py checks them before submitting (nothing is written)
        slurm_sweep.plan(find_config(args.config), args.overrides, args.sweep, args.max_runs)

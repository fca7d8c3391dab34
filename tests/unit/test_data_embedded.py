"""The embedded digits data: made once per machine, by one process while the others wait, in a per-user cache."""
import os
import subprocess
import sys

import pytest

from resnext_dist.config import load_config
from resnext_dist.data import embedded
from resnext_dist.data.loaders import LOADERS
from resnext_dist.errors import InputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENSURE = "import sys; from resnext_dist.data.embedded import ensure_digits; print(*ensure_digits(sys.argv[1]))"


def test_the_cache_is_per_user_outside_the_repository(monkeypatch, tmp_path):
    monkeypatch.delenv("RESNEXT_DIST_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embedded.cache_dir() == str(tmp_path / "xdg" / "resnext_dist")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert embedded.cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "resnext_dist")
    monkeypatch.setenv("RESNEXT_DIST_CACHE", str(tmp_path / "mine"))
    assert embedded.cache_dir() == str(tmp_path / "mine")


@pytest.mark.slow
def test_concurrent_processes_make_it_once_and_all_get_complete_files(tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", ENSURE, str(cache)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert all(code == 0 for code, _, _ in results), results
    paths = {out.strip() for _, out, _ in results}
    assert len(paths) == 1  # every process got the same two files
    writes = "".join(err for _, _, err in results)
    assert writes.count("writing the embedded digits (train)") == 1, writes
    assert writes.count("writing the embedded digits (val)") == 1, writes
    assert sorted(os.listdir(cache)) == [".digits.lock", "digits16_raw_train.beton", "digits16_raw_train.classes.json",
                                         "digits16_raw_val.beton", "digits16_raw_val.classes.json"]

    from ffcv.reader import Reader
    train, val = paths.pop().split()
    assert Reader(train).num_samples + Reader(val).num_samples == 1797  # scikit-learn's digits, all of them

    again = subprocess.run([sys.executable, "-c", ENSURE, str(cache)], cwd=REPO, capture_output=True, text=True)
    assert again.returncode == 0 and again.stderr == ""  # made once: the second run only finds it


def test_embedded_names_resolve_to_the_cache_and_other_paths_stay(monkeypatch, tmp_path):
    monkeypatch.setenv("RESNEXT_DIST_CACHE", str(tmp_path))
    cfg = load_config("configs/quickstart.yaml", [])
    data = LOADERS["ffcv"].with_files(cfg.data)
    assert data.train == str(tmp_path / "digits16_raw_train.beton") and os.path.isfile(data.train)
    assert data.val == str(tmp_path / "digits16_raw_val.beton") and os.path.isfile(data.val)
    assert cfg.data.train == "embedded:digits/train"  # the config itself keeps the name (config.yaml is portable)
    mine = load_config("configs/quickstart.yaml", ["data.train=d/t.beton", "data.val=''",
                                                       "model.num_classes=10"]).data
    assert (LOADERS["ffcv"].with_files(mine).train, LOADERS["ffcv"].with_files(mine).val) == ("d/t.beton", "")


@pytest.mark.parametrize("overrides, message", [
    (["data.train=embedded:digits/test"], r"data.train='embedded:digits/test': no such embedded dataset; known: "
                                          r"embedded:digits/train, embedded:digits/val"),
    (["data.loader=torchvision"], r"data.train='embedded:digits/train' is an FFCV dataset: it needs data.loader=ffcv"),
])
def test_a_bad_embedded_name_is_refused_at_load(overrides, message):
    with pytest.raises(InputError, match=message):
        load_config("configs/quickstart.yaml", overrides)


def test_an_unwritable_cache_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"cannot create the embedded-data cache .*RESNEXT_DIST_CACHE"):
        embedded.ensure_digits(str(blocker / "cache"))

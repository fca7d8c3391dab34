"""bench/memory_limit.py against the real kernel: a memory cgroup that kills a child using more than its limit
(and says so), disk reads counted after a file is dropped from the page cache and not when it is cached, sizes;
and `bench loader --memory-limit` refusing a .beton that fits in the limit."""
import os
import subprocess
import sys

import pytest

from resnext_dist.bench.memory_limit import MemoryCgroup, drop_from_page_cache, parse_size, read_bytes
from resnext_dist.errors import InputError


def test_sizes():
    assert parse_size("1G") == 2**30 and parse_size("800M") == 800 * 2**20 and parse_size("1.5GiB") == 3 * 2**29
    assert parse_size("65536") == 65536 and parse_size("64k") == 65536
    with pytest.raises(InputError, match=r"--memory-limit 'lots': expected a size such as 2G or 800M"):
        parse_size("lots")


def cgroup_or_skip(limit):
    try:
        return MemoryCgroup(limit, f"resnext_test_{os.getpid()}")
    except InputError as e:
        pytest.skip(str(e))


def test_a_child_over_the_limit_is_killed_and_counted_one_under_it_runs():
    group = cgroup_or_skip(256 * 2**20)
    try:
        fits = subprocess.run([sys.executable, "-c", "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                              preexec_fn=group.enter)
        assert fits.returncode == 0 and group.oom_kills() == 0
        big = subprocess.run([sys.executable, "-c", "b = bytearray(512 * 2**20); b[::4096] = b'x' * len(b[::4096])"],
                             preexec_fn=group.enter, capture_output=True)
        assert big.returncode == -9 and group.oom_kills() >= 1
        assert 64 * 2**20 < group.peak() <= 256 * 2**20
    finally:
        group.remove()
    assert not os.path.exists(group.path)


def test_disk_reads_are_counted_once_a_file_left_the_page_cache(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(os.urandom(32 * 2**20))
    drop_from_page_cache(str(path))
    before = read_bytes()
    path.read_bytes()
    cold = read_bytes() - before
    before = read_bytes()
    path.read_bytes()
    warm = read_bytes() - before
    if cold == 0:
        pytest.skip("this filesystem does not count reads in /proc/self/io (tmpfs?)")
    assert cold >= 32 * 2**20 and warm < 2**20


def test_bench_loader_refuses_a_limit_the_beton_fits_in(tmp_path, capsys):
    from resnext_dist.bench import main

    args = ["loader", "--images", "16", "data.batch_size=8", "--photo-size", "40x48", "--workdir", str(tmp_path)]
    assert main([*args, "--memory-limit", "1G"]) == 2
    beton = tmp_path / "photos_16_40x48_jpg.beton"
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --memory-limit 1G: {beton} ({beton.stat().st_size / 2**30:.2f} GiB) fits in it; give more --images "
        "(or a larger --photo-size) or a smaller limit")
    assert main([*args, "--memory-limit", "much"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == ("error: --memory-limit 'much': expected a size such "
                                                                 "as 2G or 800M")

"""`bench loader --decode cpu,gpu --cores N`: data.decode=gpu timed beside the CPU path, in a child pinned to N
cores (a smoke test of the figures' plumbing, not a timing), and `bench train --inputs ffcv-cpu,ffcv-gpu`."""
import json
import os

import pytest


@pytest.mark.slow  # a child process that imports FFCV and compiles two pipelines (~30 s on 2 cores)
def test_bench_loader_times_both_decodes_on_a_pinned_core(tmp_path, capsys):
    from resnext_dist.bench.loader import run

    out = tmp_path / "loader.json"
    assert run(["--images", "24", "--photo-size", "40x48", "data.batch_size=8", "data.train_res=32", "--epochs", "1",
                "--warmup", "0", "--loaders", "ffcv", "--decode", "cpu,gpu", "--cores", "1", "--workdir",
                str(tmp_path / "w"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["loader"]: r for r in result["rows"]}
    assert sorted(rows) == ["ffcv", "ffcv-gpu"]
    assert all(r["cores"] == 1 and r["workers"] == 1 and r["img_per_s_per_core"] == r["img_per_s"] > 0
               for r in rows.values())  # the child saw one core: measured there, not assumed here
    assert 0 < rows["ffcv-gpu"]["device_ms_per_image"] < 1000 and "device_ms_per_image" not in rows["ffcv"]
    ratio = result["summary"]["gpu_vs_cpu_decode_1_workers_1_cores"]
    assert ratio == pytest.approx(rows["ffcv-gpu"]["img_per_s"] / rows["ffcv"]["img_per_s"])
    assert "ffcv-gpu, 1 worker, 1 core" in capsys.readouterr().out


def test_bench_loader_refuses_bad_decode_and_core_counts(capsys):
    from resnext_dist.bench import main

    assert main(["loader", "--decode", "nvjpeg"]) == 2
    assert capsys.readouterr().err.strip() == "error: --decode 'nvjpeg': choose from cpu, gpu"
    assert main(["loader", "--cores", f"{len(os.sched_getaffinity(0)) + 1}"]) == 2
    assert "expected counts between 1 and this machine's" in capsys.readouterr().err


def test_bench_train_takes_the_ffcv_loader_with_each_decode():
    from resnext_dist.bench.train import trainer_overrides
    from resnext_dist.config import load_config

    cfg = load_config(None, [])
    for decode in ("cpu", "gpu"):
        got = trainer_overrides(cfg, f"ffcv-{decode}", run_dir="r", max_steps=4, log_every=2)
        assert got[:2] == ["data.loader=ffcv", f"data.decode={decode}"]

"""`python -m resnext_dist.bench loader` end to end on a handful of photos (a smoke test, not a timing)."""
import json

import pytest


@pytest.mark.slow  # compiles FFCV's random-resized-crop pipeline (~20 s on 2 cores)
def test_bench_loader_writes_rows_and_the_ffcv_to_torchvision_ratio(tmp_path, capsys):
    from resnext_dist.bench.loader import run

    out = tmp_path / "loader.json"
    assert run(["--images", "40", "--batch", "8", "--res", "32", "--workers", "1", "--epochs", "1", "--warmup", "0",
                "--loaders", "ffcv,torchvision,synthetic", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["loader"] for r in result["rows"]] == ["ffcv", "torchvision", "synthetic"]
    # images per CPU second is NaN when an epoch this small used less CPU than psutil's clock tick can see
    assert all(r["img_per_s"] > 0 and not r["img_per_cpu_s"] <= 0 and r["res"] == 32 and r["workers"] == 1
               for r in result["rows"])
    ratio = result["summary"]["ffcv_vs_torchvision_1_workers"]
    assert ratio == pytest.approx(result["rows"][0]["img_per_s"] / result["rows"][1]["img_per_s"])
    assert not result["summary"]["ffcv_vs_torchvision_1_workers_per_cpu_s"] <= 0  # NaN allowed, as above
    printed = capsys.readouterr().out
    assert "ffcv, 1 worker" in printed and "ffcv_vs_torchvision_1_workers" in printed
    assert len(list((tmp_path / "w" / "photos").rglob("*.jpg"))) == 40  # the JPEGs are kept with --workdir


def test_bench_loader_bad_options_exit_2(capsys):
    from resnext_dist.bench import main

    assert main(["loader", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers '0': each count must be >= 1"

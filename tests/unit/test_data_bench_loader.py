"""`python -m resnext_dist.bench loader` end to end on a handful of photos (a smoke test, not a timing)."""
import json

import pytest


@pytest.mark.slow  # compiles FFCV's random-resized-crop pipeline (~20 s on 2 cores)
def test_bench_loader_writes_rows_and_the_ffcv_to_torchvision_ratio(tmp_path, capsys):
    from resnext_dist.bench.loader import run

    out = tmp_path / "loader.json"
    assert run(["--images", "40", "--batch", "8", "--res", "32", "--workers", "1", "--epochs", "1", "--warmup", "0",
                "--loaders", "ffcv,ffcv-full,torchvision,synthetic", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["loader"] for r in result["rows"]] == ["ffcv", "ffcv-full", "torchvision", "synthetic"]
    # images per CPU second is NaN when an epoch this small used less CPU than psutil's clock tick can see
    assert all(r["img_per_s"] > 0 and not r["img_per_cpu_s"] <= 0 and r["res"] == 32 and r["workers"] == 1
               for r in result["rows"])
    ratio = result["summary"]["ffcv_vs_torchvision_1_workers"]
    assert ratio == pytest.approx(result["rows"][0]["img_per_s"] / result["rows"][2]["img_per_s"])
    speedup = result["summary"]["crop_decode_speedup_1_workers"]  # data.crop_decode on vs off
    assert speedup == pytest.approx(result["rows"][0]["img_per_s"] / result["rows"][1]["img_per_s"])
    assert not result["summary"]["ffcv_vs_torchvision_1_workers_per_cpu_s"] <= 0  # NaN allowed, as above
    costs = {k: v for k, v in result["summary"].items() if k.startswith("ms_per_image_")}
    assert sorted(costs) == [f"ms_per_image_{k}" for k in ("ffcv_area_resize", "ffcv_crop_decode", "ffcv_decode",
                                                           "ffcv_resize", "pil_decode", "pil_resize", "pil_to_tensor")]
    assert all(0 < ms < 1000 for ms in costs.values()), costs
    printed = capsys.readouterr().out
    assert "ffcv, 1 worker" in printed and "ffcv_vs_torchvision_1_workers" in printed
    assert len(list((tmp_path / "w" / "photos_350x467").rglob("*.jpg"))) == 40  # kept with --workdir


def test_bench_loader_prepare_only_writes_the_photos_and_a_proportion_beton(tmp_path, capsys):
    from ffcv.reader import Reader
    from PIL import Image

    from resnext_dist.bench.loader import run

    assert run(["--images", "24", "--batch", "8", "--photo-size", "40x48", "--write-mode", "proportion",
                "--workdir", str(tmp_path), "--prepare-only"]) == 0
    beton = tmp_path / "photos_24_40x48_proportion.beton"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(beton)
    jpegs = sorted((tmp_path / "photos_40x48").rglob("*.jpg"))
    assert len(jpegs) == 24 and all(Image.open(f).size == (48, 40) for f in jpegs)
    reader = Reader(str(beton))
    modes = reader.metadata[f"f{reader.field_names.index('image')}"]["mode"]  # 0 = JPEG, 1 = raw pixels
    assert len(modes) == 24 and set(modes.tolist()) == {0, 1}
    # A second call reuses both (nothing is rewritten: same modification time).
    before = beton.stat().st_mtime_ns
    assert run(["--images", "24", "--batch", "8", "--photo-size", "40x48", "--write-mode", "proportion",
                "--workdir", str(tmp_path), "--prepare-only"]) == 0
    assert beton.stat().st_mtime_ns == before


def test_bench_loader_bad_options_exit_2(capsys):
    from resnext_dist.bench import main

    assert main(["loader", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers '0': each count must be >= 1"
    assert main(["loader", "--photo-size", "500x400"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --photo-size '500x400': expected HxW between 8x8 and "
                                               "427x640, e.g. 300x400")
    assert main(["loader", "--prepare-only"]) == 2
    assert capsys.readouterr().err.strip() == "error: --prepare-only needs --workdir (where the .beton is kept)"

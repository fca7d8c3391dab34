"""`python -m resnext_dist.bench loader` end to end on a handful of photos (a smoke test, not a timing)."""
import json

import pytest


@pytest.mark.slow  # compiles FFCV's random-resized-crop pipeline (~20 s on 2 cores)
def test_bench_loader_writes_rows_and_the_ffcv_to_torchvision_ratio(tmp_path, capsys):
    from resnext_dist.bench.loader import run

    out = tmp_path / "loader.json"
    assert run(["--images", "40", "data.batch_size=8", "data.train_res=32", "--workers", "1", "--epochs", "1", "--warmup", "0",
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
    assert sorted(costs) == [f"ms_per_image_{k}" for k in ("cpu_normalize", "ffcv_area_resize", "ffcv_crop_decode",
                                                           "ffcv_decode", "ffcv_resize", "pil_decode", "pil_resize",
                                                           "pil_to_tensor")]
    assert all(0 < ms < 1000 for ms in costs.values()), costs
    printed = capsys.readouterr().out
    assert "ffcv, 1 worker" in printed and "ffcv_vs_torchvision_1_workers" in printed
    assert len(list((tmp_path / "w" / "photos_350x467").rglob("*.jpg"))) == 40  # kept with --workdir


def test_bench_loader_prepare_only_writes_the_photos_and_a_proportion_beton(tmp_path, capsys):
    from ffcv.reader import Reader
    from PIL import Image

    from resnext_dist.bench.loader import run

    assert run(["--images", "24", "data.batch_size=8", "--photo-size", "40x48", "--write-mode", "proportion",
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
    assert run(["--images", "24", "data.batch_size=8", "--photo-size", "40x48", "--write-mode", "proportion",
                "--workdir", str(tmp_path), "--prepare-only"]) == 0
    assert beton.stat().st_mtime_ns == before


def test_bench_loader_bad_options_exit_2(capsys):
    from resnext_dist.bench import main

    assert main(["loader", "--workers", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --workers '0': each count must be >= 1"
    assert main(["loader", "--photo-size", "500x400"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --photo-size '500x400': expected HxW between 8x8 and "
                                               "427x640, e.g. 300x400")
    assert main(["loader", "data.batch_sise=8"]) == 2  # the trainer's keys, checked by the trainer's config
    assert capsys.readouterr().err.strip() == ("error: unknown config key 'data.batch_sise' in command line "
                                               "(did you mean data.batch_size?)")
    assert main(["loader", "--prepare-only"]) == 2
    assert capsys.readouterr().err.strip() == "error: --prepare-only needs --workdir (where the .beton is kept)"


def test_per_image_resize_is_the_one_the_decoders_run_shrinking_and_growing():
    """ms_per_image_ffcv_area_resize times what data.crop_decode runs: our INTER_AREA when the crop shrinks,
    FFCV's OpenCV call when it must grow (a 300x400 photo's half-area crop is 212 px high, below 224)."""
    import numpy as np
    from ffcv.libffcv import resize_crop

    from resnext_dist.bench.per_image import crop_decode_resize
    from resnext_dist.data import crop_decode

    if not crop_decode.available():
        pytest.skip("the partial JPEG decoder is not built")
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    for res in (176, 224):
        ours, opencv = np.empty((res, res, 3), np.uint8), np.empty((res, res, 3), np.uint8)
        crop_decode_resize(image, 44, 59, 212, 282, ours)
        resize_crop(image, 44, 44 + 212, 59, 59 + 282, opencv)
        if res == 176:  # shrinks: ours, within one level of OpenCV's
            assert crop_decode.resize_area(image, 44, 59, 212, 282, np.empty_like(ours)) == 0
            assert np.abs(ours.astype(int) - opencv).max() <= 1
        else:  # grows in height: OpenCV's, exactly
            assert crop_decode.resize_area(image, 44, 59, 212, 282, np.empty_like(ours)) < 0
            assert np.array_equal(ours, opencv)

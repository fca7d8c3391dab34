"""`bench loader` with the out-of-cache loaders on a handful of photos (a smoke test, not a timing): ffcv-random,
ffcv-pages and ffcv-staged rows with the bytes read from the disk per image and the build time (the staging copy)."""
import json
import os

import pytest


@pytest.mark.slow  # compiles FFCV's random-resized-crop pipeline (~20 s on 2 cores)
def test_bench_loader_rows_for_the_out_of_cache_loaders(tmp_path):
    from resnext_dist.bench.loader import run

    out, work = tmp_path / "loader.json", tmp_path / "w"
    assert run(["--images", "40", "data.batch_size=8", "data.train_res=32", "--workers", "1", "--epochs", "1",
                "--warmup", "0", "--loaders", "ffcv-random,ffcv-pages,ffcv-staged", "--workdir", str(work),
                "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["loader"] for r in rows] == ["ffcv-random", "ffcv-pages", "ffcv-staged"]
    assert all(r["img_per_s"] > 0 and r["read_mb_per_image"] >= 0 and r["build_s"] > 0 for r in rows)
    staged = [f for f in os.listdir(work / "stage") if f.endswith(".beton")]
    assert len(staged) == 1 and os.path.getsize(work / "stage" / staged[0]) == os.path.getsize(
        work / "photos_40_350x467_jpg.beton")

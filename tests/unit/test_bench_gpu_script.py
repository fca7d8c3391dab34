"""launch/gpu_bench.sh in its CPU smoke mode: the prepared GPU script's steps run and the table comes last."""
import json
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_bench_smoke_runs_and_ends_with_the_table(tmp_path):
    env = dict(os.environ, GPU_BENCH_SMOKE="1", GPU_BENCH_ONLY="r50_32_eager ffcv_32", GPU_BENCH_DIR=str(tmp_path / "work"),
               GPU_BENCH_RESULTS=str(tmp_path / "results"), PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_bench.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.rstrip().splitlines()
    # Last: the title, the header, the rule and one row per measure of the selected steps.
    assert lines[-8].startswith("resnext_dist gpu_bench")
    assert lines[-7].split()[:2] == ["bench", "measure"] and set(lines[-6]) <= {"-", " "}
    assert [re.split(r"\s{2,}", line)[:2] for line in lines[-5:]] == [
        ["train", "ceiling (bare step)"], ["train", "trainer (synthetic)"], ["train", "trainer (ffcv)"],
        ["loader", "ffcv, 1 worker"], ["loader", "ffcv-full, 1 worker"]]
    for step in ("write_beton", "decode_check", "r50_32_eager", "ffcv_32"):  # the decode check always runs
        assert f"  {step}: ok" in proc.stdout
    assert "  r50_32_compiled: not selected" in proc.stdout
    result = json.loads((tmp_path / "results" / "r50_32_eager.json").read_text())
    assert [r["measure"] for r in result["rows"]] == ["ceiling (bare step)", "trainer (synthetic)", "trainer (ffcv)"]
    loader = json.loads((tmp_path / "results" / "ffcv_32.json").read_text())
    assert [(r["measure"], r["res"], r["batch"]) for r in loader["rows"]] == [("ffcv, 1 worker", 32, 8),
                                                                           ("ffcv-full, 1 worker", 32, 8)]
    check = json.loads((tmp_path / "results" / "decode_check.json").read_text())["rows"][0]
    assert check["ok"] and check["unequal_repeats"] == 0 and check["repeats"] == 4
    assert "partial JPEG decode (data.crop_decode) on" in proc.stdout
    assert (tmp_path / "work" / "photos_128_40x48_t26_proportion.beton").is_file()

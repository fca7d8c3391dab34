"""launch/gpu_bench.sh in its CPU smoke mode: the prepared GPU script's steps run and the table comes last."""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_bench_smoke_runs_and_ends_with_the_table(tmp_path):
    env = dict(os.environ, GPU_BENCH_SMOKE="1", GPU_BENCH_ONLY="r50_32_eager", GPU_BENCH_DIR=str(tmp_path / "work"),
               GPU_BENCH_RESULTS=str(tmp_path / "results"), PYTHON=sys.executable)
    env.pop("OUT", None)
    proc = subprocess.run(["bash", os.path.join(REPO, "launch", "gpu_bench.sh")], env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.rstrip().splitlines()
    # Last: the title, the header, the rule and one row per measure of the selected step.
    assert lines[-6].startswith("resnext_dist gpu_bench")
    assert lines[-5].split()[:2] == ["measure", "arch"] and set(lines[-4]) <= {"-", " "}
    assert [line.split("  ")[0] for line in lines[-3:]] == ["ceiling (bare step)", "trainer (synthetic)",
                                                             "trainer (ffcv)"]
    assert "  write_beton: ok" in proc.stdout and "  r50_32_eager: ok" in proc.stdout
    assert "  r50_32_compiled: not selected" in proc.stdout
    result = json.loads((tmp_path / "results" / "r50_32_eager.json").read_text())
    assert [r["measure"] for r in result["rows"]] == ["ceiling (bare step)", "trainer (synthetic)", "trainer (ffcv)"]
    assert (tmp_path / "work" / "synthetic_128x48.beton").is_file()

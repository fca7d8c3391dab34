"""`bench train`: the trainer end to end against the ceiling, on a tiny net on CPU (structure, never speed)."""
import json
import subprocess
import sys

import pytest

from resnext_dist.bench import main
from resnext_dist.bench.train import summarize_log

TINY = ["model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8",
        "model.stem=cifar", "model.num_classes=10", "data.train_res=16", "data.batch_size=4", "--threads", "1"]
SHORT = ["--steps", "4", "--log-every", "2", "--ceiling-steps", "2", "--ceiling-warmup", "1"]


def test_summarize_log_weights_intervals_and_skips_warmup():
    # 3 intervals of a batch-10 run: 2 steps at 10 img/s (warm-up), 2 steps at 20 img/s, 4 steps at 40 img/s
    records = [
        {"kind": "step", "step": 2, "time": 100.0, "img_per_s": 10.0, "data_wait": 0.5, "peak_mem_mb": 5.0},
        {"kind": "step", "step": 4, "time": 101.0, "img_per_s": 20.0, "data_wait": 0.5, "peak_mem_mb": 6.0},
        {"kind": "epoch", "step": 4, "time": 103.0},  # an epoch end between intervals: only wall time sees it
        {"kind": "step", "step": 8, "time": 105.0, "img_per_s": 40.0, "data_wait": 0.0, "peak_mem_mb": 7.0},
    ]
    s = summarize_log(records, global_batch=10, warmup_intervals=1)
    # timed: 20 images in 1 s (wait 0.5 s) + 40 images in 1 s (wait 0)
    assert s["img_per_s"] == pytest.approx(60 / 2.0)
    assert s["data_wait"] == pytest.approx(0.5 / 2.0)
    assert s["timed_steps"] == 6 and s["timed_intervals"] == 2
    assert s["wall_img_per_s"] == pytest.approx(60 / 5.0)  # from the warm-up's end (t=100) to t=105
    assert s["peak_mem_mb"] == 7.0
    with pytest.raises(ValueError, match="none after the 3 warm-up"):
        summarize_log(records, global_batch=10, warmup_intervals=3)


def test_train_synthetic_against_ceiling(tmp_path, capsys):
    out = tmp_path / "train.json"
    assert main(["train", *TINY, *SHORT, "--run-root", str(tmp_path / "new"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bench train:" in printed and "vs ceiling" in printed and "data wait" in printed
    result = json.loads(out.read_text())
    ceiling, trainer = result["rows"]
    assert ceiling["measure"] == "ceiling (bare step)" and ceiling["ratio"] == 1.0
    assert trainer["measure"] == "trainer (synthetic)" and trainer["input"] == "synthetic"
    assert trainer["ratio"] == pytest.approx(trainer["img_per_s"] / ceiling["img_per_s"])
    assert 0.0 <= trainer["data_wait"] <= 1.0
    assert trainer["timed_steps"] == 4
    for row in (ceiling, trainer):
        assert (row["arch"], row["res"], row["batch"], row["precision"], row["compile"]) == \
            ("resnext50_32x4d", 16, 4, "fp32", False)
    summary = result["summary"]
    assert summary["synthetic_ratio"] == pytest.approx(trainer["ratio"])
    assert summary["target_ratio"] == 0.97 and isinstance(summary["meets_target"], bool)
    assert list((tmp_path / "new").glob("resnext-bench-*")) == []  # made if missing; run directories removed


@pytest.mark.parametrize("args, culprit", [
    (["--inputs", "ffcv"], "--inputs ffcv needs data.train"),
    (["data.loader=ffcv", "data.train=/nonexistent.beton"], "/nonexistent.beton"),
    (["data.loader=ffcv"], "data.train is required"),
    (["--inputs", "webdataset"], "'webdataset'"),
    (["train.nan_chek=false"], "train.nan_chek"),
    (["train.max_steps=3"], "--steps"),
    (["--log-every", "0"], "--log-every"),
])
def test_train_bad_input_exits_2_before_measuring(args, culprit, capsys, tmp_path):
    assert main(["train", *TINY, *SHORT, "--run-root", str(tmp_path), *args]) == 2
    captured = capsys.readouterr()
    assert "ceiling" not in captured.out and list(tmp_path.iterdir()) == []  # nothing measured, nothing left
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and culprit in err


# The GPU host has no mlflow: the bench (trainer with tracking off, FFCV input) must never import it.
# Every attempt counts, also one whose ImportError the code would catch and carry on from.
NO_MLFLOW = """
import importlib.abc, sys
attempts = []
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mlflow" or name.startswith("mlflow."):
            attempts.append(name)
            raise ImportError("mlflow is blocked in this test")
sys.meta_path.insert(0, Block())
from resnext_dist.bench import main
rc = main(sys.argv[1:])
assert not attempts, f"mlflow import attempted: {attempts}"
sys.exit(rc)
"""


@pytest.mark.slow
def test_train_with_ffcv_input_and_without_mlflow(tmp_path):
    from resnext_dist.data.sources import SyntheticSource
    from resnext_dist.data.write import write_beton

    beton = tmp_path / "tiny.beton"
    write_beton(SyntheticSource(64, 10, size=24), str(beton), write_mode="jpg", workers=1)
    out = tmp_path / "train.json"
    proc = subprocess.run([sys.executable, "-c", NO_MLFLOW, "train", *TINY, *SHORT, "data.loader=ffcv",
                           f"data.train={beton}", "data.num_workers=1", "--run-root", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert [r["measure"] for r in result["rows"]] == ["ceiling (bare step)", "trainer (synthetic)", "trainer (ffcv)"]
    ffcv = result["rows"][2]
    assert ffcv["img_per_s"] > 0 and 0.0 <= ffcv["data_wait"] <= 1.0 and ffcv["timed_steps"] == 4
    assert {"ffcv_ratio", "ffcv_data_wait", "synthetic_ratio", "meets_target"} <= set(result["summary"])

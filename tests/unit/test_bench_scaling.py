"""`bench scaling`: 1 process vs 2 (torchrun, gloo) on a tiny net on CPU (structure, never speed)."""
import json

import pytest
import torch

from resnext_dist.bench import main

TINY = ["model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8",
        "model.stem=cifar", "model.num_classes=10", "data.train_res=16", "data.batch_size=4"]


@pytest.mark.slow
def test_scaling_one_vs_two_processes(tmp_path, capsys):
    out = tmp_path / "scaling.json"
    assert main(["scaling", *TINY, "--device", "cpu", "--steps", "4", "--log-every", "2",
                 "--run-root", str(tmp_path / "new"), "--out", str(out)]) == 0  # --run-root made if missing
    printed = capsys.readouterr().out
    assert "bench scaling:" in printed and "efficiency" in printed and "1 intra-op thread" in printed
    result = json.loads(out.read_text())
    one, two, independent = result["rows"]
    assert (one["world_size"], two["world_size"], independent["world_size"]) == (1, 2, 2)
    assert one["efficiency"] == 1.0
    assert two["per_rank_img_per_s"] == pytest.approx(two["img_per_s"] / 2)
    assert two["efficiency"] == pytest.approx(two["img_per_s"] / (2 * one["img_per_s"]))
    assert "torch.distributed.run" in two["command"] and "--nproc_per_node=2" in two["command"]
    assert "torch.distributed.run" not in one["command"]
    assert "torch.distributed.run" not in independent["command"] and "x2 at once" in independent["command"]
    assert result["params"]["threads_per_process"] == 1 and result["params"]["nproc"] == 2
    summary = result["summary"]
    assert summary["efficiency"] == two["efficiency"]
    assert summary["ddp_vs_independent"] == pytest.approx(two["img_per_s"] / independent["img_per_s"])
    assert isinstance(summary["meets_target"], bool)
    assert list((tmp_path / "new").glob("resnext-scaling-*")) == []


@pytest.mark.parametrize("args, culprit", [
    (["--device", "cpu", "--nproc", "1"], "--nproc 1"),
    (["--device", "cpu", "--repeats", "0"], "--repeats"),
    (["--device", "cpu", "dist.bakend=gloo"], "dist.bakend"),
] + ([(["--device", "cuda"], "GPU(s) visible")] if torch.cuda.device_count() < 2 else []))
def test_scaling_bad_input_exits_2(args, culprit, capsys):
    assert main(["scaling", *TINY, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err

"""`python -m resnext_dist.bench` dispatcher, `bench model` (the ceiling) and `bench report` on a tiny net, CPU.

They check the output's structure and the bad-input contract, never a speed."""
import json
import subprocess
import sys

import pytest

from resnext_dist.bench import main
from resnext_dist.bench.report import format_table

TINY = ["--layers", "1,1,1,1", "--cardinality", "2", "--group-width", "4", "--base-channels", "8",
        "--stem", "cifar", "--num-classes", "10", "--res", "16", "--batch", "4", "--threads", "1"]


def test_model_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert main(["model", *TINY, "--device", "cpu", "--steps", "3", "--warmup", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bench model:" in printed and "img/s" in printed and "ceiling (bare step)" in printed
    result = json.loads(out.read_text())
    assert result["bench"] == "model"
    assert result["command"].startswith("python -m resnext_dist.bench model ")
    assert result["machine"]["device"] == "cpu"
    assert result["params"]["layers"] == [1, 1, 1, 1] and result["params"]["precision"] == "fp32"
    [row] = result["rows"]
    assert row["measure"] == "ceiling (bare step)" and row["res"] == 16 and row["batch"] == 4
    assert row["img_per_s"] > 0 and row["step_ms"] > 0
    # img/s and step time are two views of one measurement
    assert row["img_per_s"] == pytest.approx(4 * 1000.0 / row["step_ms"])
    assert result["summary"]["ceiling_img_per_s"] == row["img_per_s"]


@pytest.mark.parametrize("args, culprit", [
    (["--layers", "1,1"], "model.layers"),
    (["--layers", "one"], "--layers"),
    (["--arch", "resnext51"], "model.arch"),
    (["--steps", "0"], "--steps"),
    (["--batch", "0"], "data.batch_size"),
])
def test_model_bad_input_exits_2_with_one_line(args, culprit, capsys):
    assert main(["model", *TINY, "--device", "cpu", "--steps", "1", "--warmup", "0", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and culprit in err


def test_dispatcher_unknown_and_help(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown bench 'nonsense'" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "scaling" in capsys.readouterr().out
    assert main([]) == 2


def test_module_entry_point_runs():
    proc = subprocess.run([sys.executable, "-m", "resnext_dist.bench", "model", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "--channels-last" in proc.stdout and "--compile" in proc.stdout


def test_report_combines_results(tmp_path, capsys):
    files = []
    for i, rate in enumerate((100.0, 50.0)):
        result = {"bench": "train", "machine": {"gpu": "Test GPU"},
                  "rows": [{"bench": "train", "measure": f"m{i}", "arch": "a", "res": 8, "img_per_s": rate,
                            "ratio": rate / 100.0, "data_wait": 0.25}]}
        files.append(tmp_path / f"r{i}.json")
        files[-1].write_text(json.dumps(result))
    assert main(["report", *map(str, files)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "Test GPU" in lines[0]
    assert lines[1].split() == ["measure", "arch", "res", "img/s", "vs", "ceiling", "data", "wait"]
    assert lines[3].split() == ["m0", "a", "8", "100.0", "1.000", "25.0%"]
    assert lines[4].split() == ["m1", "a", "8", "50.0", "0.500", "25.0%"]


def test_report_bad_file_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert main(["report", str(bad)]) == 2
    assert "bad.json: not a bench result" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.json")]) == 2


def test_table_shows_only_filled_columns():
    table = format_table([{"bench": "x", "measure": "a", "img_per_s": 1234.5, "ratio": None},
                          {"bench": "x", "measure": "b", "img_per_s": 10.0, "data_wait": 0.5}])
    header = table.splitlines()[0]
    assert "img/s" in header and "data wait" in header and "vs ceiling" not in header and "bench" not in header
    assert "1,234.5" in table and "50.0%" in table


def test_workload_label_spells_out_the_net_actually_built():
    from resnext_dist.bench.model import Workload
    assert Workload().label().startswith("resnext50_32x4d 224px batch 256 bf16 channels_last eager")
    # Only the depth overridden: width and groups come from the preset, not "None".
    assert Workload(layers=[1, 1, 1, 1]).label().startswith("resnext50_32x4d[layers=1,1,1,1,C=32,w=4,base=64] ")
    assert Workload(arch="resnext101_32x8d", cardinality=8).label().startswith(
        "resnext101_32x8d[layers=3,4,23,3,C=8,w=8,base=64] ")
    assert Workload(layers=[1, 1, 1, 1], cardinality=2, group_width=4, base_channels=8).label().startswith(
        "resnext50_32x4d[layers=1,1,1,1,C=2,w=4,base=8] ")


def test_workload_counts_the_parameters_it_reports():
    from resnext_dist.bench.model import Workload
    full = Workload()
    assert full.num_parameters() == 25_028_904  # ResNeXt-50 32x4d, as tests/unit/test_models.py asserts
    assert full.label().endswith(", 25,028,904 parameters") and full.params()["num_parameters"] == 25_028_904
    narrow = Workload(layers=[1, 1, 1, 1], cardinality=8, group_width=4, base_channels=16, stem="cifar",
                      num_classes=10)
    wide = Workload(layers=[1, 1, 1, 1], stem="cifar", num_classes=10)
    assert 0 < narrow.num_parameters() < wide.num_parameters() < full.num_parameters()

"""`python -m resnext_dist.bench` dispatcher, `bench model` (the ceiling) and `bench report` on a tiny net, CPU.

They check the output's structure and the bad-input contract, never a speed."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnext_dist.bench import main
from resnext_dist.bench.report import format_table

TINY = ["model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8",
        "model.stem=cifar", "model.num_classes=10", "data.train_res=16", "data.batch_size=4", "--threads", "1"]


def test_model_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "model.json"
    assert main(["model", *TINY, "--device", "cpu", "--steps", "3", "--warmup", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "bench model:" in printed and "img/s" in printed and "ceiling (bare step)" in printed
    result = json.loads(out.read_text())
    assert result["bench"] == "model"
    assert result["command"].startswith("python -m resnext_dist.bench model ")
    assert result["machine"]["device"] == "cpu"
    assert result["params"]["model.layers"] == [1, 1, 1, 1] and result["params"]["train.precision"] == "fp32"
    [row] = result["rows"]
    assert row["measure"] == "ceiling (bare step)" and row["res"] == 16 and row["batch"] == 4
    assert row["img_per_s"] > 0 and row["step_ms"] > 0
    # img/s and step time are two views of one measurement
    assert row["img_per_s"] == pytest.approx(4 * 1000.0 / row["step_ms"])
    assert result["summary"]["ceiling_img_per_s"] == row["img_per_s"]


@pytest.mark.parametrize("args, culprit", [
    (["model.layers=[1,1]"], "model.layers"),
    (["model.layers=one"], "model.layers"),
    (["model.arch=resnext51"], "model.arch"),
    (["model.nonsense=1"], "model.nonsense"),
    (["--config", "configs/missing.yaml"], "configs/missing.yaml"),
    (["--steps", "0"], "--steps"),
    (["data.batch_size=0"], "data.batch_size"),
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
    # the trainer's command line: --config, key=value and every config key with its doc line
    assert proc.returncode == 0 and "--config" in proc.stdout and "train.channels_last" in proc.stdout
    assert "train.compile" in proc.stdout and "--steps" in proc.stdout


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


def test_label_spells_out_the_net_actually_built():
    from resnext_dist.bench.workload import label
    from resnext_dist.config import load_config
    assert label(load_config()).startswith("resnext50_32x4d 224px batch 256 bf16 channels_last eager")
    # Only the depth overridden: width and groups come from the preset, not "None".
    assert label(load_config(None, ["model.layers=[1,1,1,1]"])).startswith(
        "resnext50_32x4d[layers=1,1,1,1,C=32,w=4,base=64] ")
    assert label(load_config(None, ["model.arch=resnext101_32x8d", "model.cardinality=8"])).startswith(
        "resnext101_32x8d[layers=3,4,23,3,C=8,w=8,base=64] ")
    assert label(load_config(None, TINY[:4])).startswith("resnext50_32x4d[layers=1,1,1,1,C=2,w=4,base=8] ")


def test_counts_the_parameters_it_reports():
    from resnext_dist.bench.workload import label, num_parameters, params
    from resnext_dist.config import load_config
    full = load_config()
    assert num_parameters(full) == 25_028_904  # ResNeXt-50 32x4d, as tests/unit/test_models.py asserts
    assert label(full).endswith(", 25,028,904 parameters") and params(full)["num_parameters"] == 25_028_904
    narrow = load_config(None, ["model.layers=[1,1,1,1]", "model.cardinality=8", "model.group_width=4",
                                "model.base_channels=16", "model.stem=cifar", "model.num_classes=10"])
    wide = load_config(None, ["model.layers=[1,1,1,1]", "model.stem=cifar", "model.num_classes=10"])
    assert 0 < num_parameters(narrow) < num_parameters(wide) < num_parameters(full)


def test_cpu_defaults_only_without_a_recipe_and_overrides_win(monkeypatch):
    """On a CPU without --config a bench runs fp32 NCHW (the trainer's defaults are a GPU's); a recipe decides
    for itself, and the command line's overrides win over both."""
    from resnext_dist.bench.model import parser
    from resnext_dist.bench.workload import load

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the recipe's path as the README writes it
    def cfg(*argv, device="cpu"):
        return load(parser().parse_intermixed_args(argv), device, force=["data.loader=synthetic"]).train

    assert (cfg().precision, cfg().channels_last) == ("fp32", False)
    assert (cfg(device="cuda").precision, cfg(device="cuda").channels_last) == ("bf16", True)
    assert cfg("train.precision=bf16").precision == "bf16"
    recipe = cfg("--config", "configs/resnext50_imagenet.yaml", "--steps", "3", "train.compile=true")
    assert recipe.precision != "fp32" and recipe.compile

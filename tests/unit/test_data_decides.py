"""Issue 26, "the data decides": data.loader=auto follows data.train, model.num_classes=0 takes the data's class
count (a mismatch with an explicit value is refused naming both), top-5 only where the model has more than 5
classes, and evaluate on a run of the embedded data (the quickstart's) or with --config NAME."""
import json
import os

import pytest

from resnext_dist.config import find_config, load_config, to_yaml
from resnext_dist.data.sources import write_class_names
from resnext_dist.errors import InputError
from resnext_dist.run.console import val_line
from resnext_dist.runlog import within_classes
from tests.data_helpers import make_image_folder

NET = ["model.layers=[1,1,1,1]", "model.cardinality=2", "model.group_width=4", "model.base_channels=8",
       "model.stem=cifar", "data.train_res=16", "data.val_res=16", "data.num_workers=0", "train.precision=fp32",
       "train.channels_last=false", "tracking.enabled=false"]


def recipe(tmp_path, data: dict, name="mine") -> str:
    """A recipe of one's own: data paths, no data.loader, no model.num_classes."""
    path = tmp_path / f"{name}.yaml"
    path.write_text("data:\n" + "".join(f"  {k}: {v}\n" for k, v in data.items()))
    return str(path)


def test_a_recipe_with_a_folder_and_no_loader_reads_that_folder_with_its_classes(tmp_path):
    make_image_folder(str(tmp_path / "shapes" / "train"), classes=("circle", "square", "triangle"), per_class=1)
    make_image_folder(str(tmp_path / "shapes" / "val"), classes=("circle", "square", "triangle"), per_class=1)
    cfg = load_config(recipe(tmp_path, {"train": tmp_path / "shapes/train", "val": tmp_path / "shapes/val"}), NET)
    assert (cfg.data.loader, cfg.model.num_classes) == ("torchvision", 3)  # was: synthetic, 1000 classes
    assert "loader: torchvision" in to_yaml(cfg)  # config.yaml says what ran, not "auto"


def test_a_beton_follows_ffcv_and_its_writers_classes_json(tmp_path):
    beton = tmp_path / "x_train.beton"
    beton.write_bytes(b"")  # the loader's own check reads the file when the run starts; the config needs its names
    write_class_names(str(beton), ["cat", "dog"])
    cfg = load_config(recipe(tmp_path, {"train": beton}), NET)
    assert (cfg.data.loader, cfg.model.num_classes) == ("ffcv", 2)
    os.remove(str(beton)[:-len(".beton")] + ".classes.json")
    with pytest.raises(InputError, match=r"^model.num_classes=0 \(the data's\): data.train='.*x_train.beton' records "
                                         r"no class names"):
        load_config(recipe(tmp_path, {"train": beton}), NET)
    assert load_config(recipe(tmp_path, {"train": beton}), [*NET, "model.num_classes=7"]).model.num_classes == 7


def test_the_embedded_digits_have_10_classes_without_writing_them(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNEXT_DIST_CACHE", str(tmp_path / "cache"))
    cfg = load_config(recipe(tmp_path, {"train": "embedded:digits/train"}), NET)
    assert (cfg.data.loader, cfg.model.num_classes) == ("ffcv", 10)
    assert not (tmp_path / "cache").exists()  # a config load writes nothing
    assert load_config(None, ["data.train=digits:16"]).data.loader == "torchvision"
    synthetic = load_config(None, ["data.loader=synthetic"])
    assert (synthetic.data.loader, synthetic.model.num_classes) == ("synthetic", 1000)


def test_auto_and_the_loader_it_picks_are_the_same_run(tmp_path):
    make_image_folder(str(tmp_path / "f"), per_class=1)
    auto = load_config(None, [*NET, f"data.train={tmp_path / 'f'}"])
    named = load_config(None, [*NET, f"data.train={tmp_path / 'f'}", "data.loader=torchvision", "model.num_classes=3"])
    assert auto.run.name == named.run.name


def test_a_class_count_the_data_contradicts_exits_2_naming_both(tmp_path, capsys):
    from resnext_dist.train import main
    make_image_folder(str(tmp_path / "f"), per_class=1)
    assert main(["--print-config", f"data.train={tmp_path / 'f'}", "data.val=''", "model.num_classes=10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: model.num_classes=10 but data.train='{tmp_path / 'f'}' has 3 classes (a, b, c)")
    assert err.count("\n") == 1


@pytest.mark.parametrize("train, message", [
    ("nowhere/at/all", r"^data.train='nowhere/at/all': no such file or folder \(data.loader=auto follows"),
    ("{tmp}/notes.txt", r"^data.train='.*notes.txt': neither a .beton file nor a folder"),
])
def test_data_auto_cannot_follow_is_one_line_naming_data_train(tmp_path, train, message):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=message):
        load_config(None, [f"data.train={train.format(tmp=tmp_path)}"])


def test_the_ffcv_loader_given_a_folder_points_to_the_torchvision_loader(tmp_path):
    make_image_folder(str(tmp_path / "f"), per_class=1)
    with pytest.raises(InputError, match=r"^data.train='.*f' is a folder, not an FFCV .beton: use "
                                         r"data.loader=torchvision \(or auto"):
        load_config(None, ["data.loader=ffcv", f"data.train={tmp_path / 'f'}", "model.num_classes=3"])


def test_top5_is_left_out_where_there_are_5_classes_or_fewer():
    figures = {"val_loss": 0.5, "val_top1": 0.9, "val_top5": 1.0, "val_images": 30, "ema_val_top5": 1.0}
    assert "top-5" not in val_line(within_classes(figures, 3))
    assert set(within_classes(figures, 5)) == {"val_loss", "val_top1", "val_images"}
    assert "| top-5 100.00% |" in val_line(within_classes(figures, 6))


def test_evaluate_a_run_of_the_embedded_data_and_with_config_by_name(tmp_path, capsys):
    """The quickstart's run directory holds data.val=embedded:digits/val: evaluate reads it as the trainer did;
    --config quickstart is the recipe of that name, as for the trainer. In one process, without a forward pass
    (building FFCV's loader compiles for tens of seconds: test_evaluate_predict.py runs evaluate end to end)."""
    from resnext_dist import evaluate
    from resnext_dist.data.loaders import loader_for

    run_dir = tmp_path / "runs" / "quickstart-x"
    cfg = load_config(find_config("quickstart"), [*NET, "data.num_workers=1", f"run.dir={run_dir}"])
    assert cfg.data.val == "embedded:digits/val"
    os.makedirs(run_dir)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    for args in ([str(run_dir)], ["--config", "quickstart", f"model.init={run_dir}", *NET]):
        assert evaluate.main([*args, "--print-config"]) == 0, capsys.readouterr().err
        assert "val: embedded:digits/val" in capsys.readouterr().out
        run_cfg, weights = evaluate.resolve(*(("quickstart", args[2:]) if args[0] == "--config" else (None, args)))
        assert weights == str(run_dir)
        # what build_val_loader reads: the embedded name made the cached file (the fault was "no such file")
        assert os.path.isfile(loader_for(run_cfg.data).with_files(run_cfg.data).val)


def test_predict_takes_key_value_like_every_command_and_names_the_datas_classes(tmp_path, capsys):
    """A run directory without an export: its config.yaml (num_classes from the folder's classes), its final
    weights, a key=value override among the images (predict took `--set K=V`, unlike the other commands)."""
    import torch

    from resnext_dist import models, predict

    make_image_folder(str(tmp_path / "f"), classes=("circle", "square", "triangle"), per_class=1, size=(16, 16))
    cfg = load_config(None, [*NET, f"data.train={tmp_path / 'f'}"])
    run_dir = tmp_path / "run"
    os.makedirs(run_dir)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    torch.save(models.build_model(cfg.model).state_dict(), run_dir / "final_weights.pt")
    image = str(tmp_path / "f" / "square" / os.listdir(tmp_path / "f" / "square")[0])
    assert predict.main([str(run_dir), image, "data.val_res=8", "--json", "--top-k", "3"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert sorted(t["name"] for t in result["top"]) == ["circle", "square", "triangle"]
    assert predict.main([str(run_dir), image, "data.no_such_key=1"]) == 2
    assert "unknown config key 'data.no_such_key'" in capsys.readouterr().err


def own_data_commands():
    """The bash block of the README's "Your own data" section, one argv per line (after `python -m`)."""
    import re
    import shlex
    text = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    section = text[text.index("## Your own data\n"):]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line.split("  #")[0].split("python -m ", 1)[1]) for line in block.splitlines() if line.strip()]


@pytest.mark.slow  # ~40 s on the 2-core VM: three commands, each a model and its data
def test_the_readmes_own_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    """An ImageFolder -> trained -> evaluated -> predictions, the README's lines in one process each (the train
    line with MLflow off and 2 epochs: the quickstart's 8 epochs and the MLflow store add a minute, not a check)."""
    import importlib

    commands = own_data_commands()
    assert [c[0] for c in commands] == ["resnext_dist.train", "resnext_dist.evaluate", "resnext_dist.predict"]
    monkeypatch.chdir(tmp_path)
    for split, n in (("train", 6), ("val", 2)):
        make_image_folder(f"shapes/{split}", classes=("circle", "square", "triangle"), per_class=n, size=(20, 20),
                          ext="jpg")
    commands[0] += ["tracking.enabled=false", "train.epochs=2"]
    for module, *argv in commands:
        assert importlib.import_module(module).main(argv) == 0, capsys.readouterr().err[-2000:]
    out = capsys.readouterr().out
    assert "no --config: the quickstart recipe's net and schedule on shapes/train (3 classes, data.loader=" \
           "torchvision)" in out  # not "training the embedded default"
    assert "  data      torchvision | 18 train / 6 val images" in out and "top-5" not in out  # 3 classes: no top-5
    predictions = [line for line in out.splitlines() if line.startswith("shapes/val/")]
    assert len(predictions) == 6 and all(line.split(": ")[1].split()[0] in ("circle", "square", "triangle")
                                         for line in predictions)
    with open("runs/shapes/export/model.json") as f:
        assert json.load(f)["class_names"] == ["circle", "square", "triangle"]

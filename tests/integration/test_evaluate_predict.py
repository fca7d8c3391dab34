"""evaluate and predict as a user runs them, in real processes: the trainer's numbers on 1 and 2 ranks,
weights from a run directory or an export, MLflow logging, and top-k classes of digit images with the
validation preprocessing."""
import json
import os
import re
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from resnext_dist import models
from resnext_dist.config import load_config
from resnext_dist.data.sources import class_names_for
from resnext_dist.weights.export import write_export
from tests.tiny import PYTHON, REPO, env, run_train

pytestmark = pytest.mark.slow

DIGITS = ["data.loader=torchvision", "data.train=digits:16", "data.val=digits:16", "data.batch_size=32",
          "train.epochs=1", "data.val_crop_ratio=0.875"]
LINE = re.compile(r"^val top-1 (\d+\.\d\d)% \| top-5 (\d+\.\d\d)% \| loss (\d+\.\d{3}) \((\d+) images\)$", re.M)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny net trained one epoch on the digits (torchvision loader): its run directory."""
    run_dir = str(tmp_path_factory.mktemp("eval") / "run")
    r = run_train(run_dir, DIGITS)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def evaluate(args, nproc=1, timeout=300):
    module = ["-m", "resnext_dist.evaluate", *args]
    cmd = [PYTHON, *module] if nproc == 1 else [PYTHON, "-m", "torch.distributed.run", "--standalone",
                                                  f"--nproc_per_node={nproc}", *module]
    return subprocess.run(cmd, cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)


def last_eval(run_dir):
    with open(os.path.join(run_dir, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r for r in records if "val_top1" in r][-1]


def test_evaluate_run_dir_equals_the_trainers_evaluation_on_1_and_2_processes(trained, tmp_path):
    out = {}
    for nproc in (1, 2):
        r = evaluate([trained, "--json", str(tmp_path / f"{nproc}.json"), "dist.backend=gloo"], nproc)
        assert r.returncode == 0, r.stderr[-3000:]
        lines = LINE.findall(r.stdout)
        assert len(lines) == 1, r.stdout  # printed once, by rank 0
        assert lines[0][3] == "360"
        with open(tmp_path / f"{nproc}.json") as f:
            out[nproc] = json.load(f)
        assert out[nproc]["world_size"] == nproc and out[nproc]["tta_flip"] is False
    trainer = last_eval(trained)
    for nproc in (1, 2):
        assert out[nproc]["val_images"] == trainer["val_images"] == 360
        # the same images, counted once: hits are integers, so the rates are equal exactly
        assert out[nproc]["val_top1"] == trainer["val_top1"] and out[nproc]["val_top5"] == trainer["val_top5"]
        assert out[nproc]["val_loss"] == pytest.approx(trainer["val_loss"], rel=1e-6)


def test_evaluate_ffcv_beton_same_figures_on_1_and_2_processes(trained, tmp_path):
    pytest.importorskip("ffcv")
    from resnext_dist.data.sources import DigitsSource
    from tests.data_helpers import write

    beton = str(tmp_path / "digits_val.beton")
    write(DigitsSource("val", 16), beton)
    out = []
    for nproc in (1, 2):
        r = evaluate([trained, "data.loader=ffcv", f"data.val={beton}", "data.num_workers=1",
                      "--json", str(tmp_path / f"{nproc}.json")], nproc)
        assert r.returncode == 0, r.stderr[-3000:]
        with open(tmp_path / f"{nproc}.json") as f:
            out.append(json.load(f))
    assert out[0]["val_images"] == out[1]["val_images"] == 360
    assert (out[0]["val_top1"], out[0]["val_top5"]) == (out[1]["val_top1"], out[1]["val_top5"])
    assert out[0]["val_loss"] == pytest.approx(out[1]["val_loss"], rel=1e-6)


def test_evaluate_an_export_with_config_tta_and_mlflow(trained, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    cfg = load_config(os.path.join(trained, "config.yaml"))
    model = models.build_model(cfg.model)
    from resnext_dist.weights import init_model
    init_model(model, os.path.join(trained, "export"))
    export = write_export(model, cfg, str(tmp_path / "export"), class_names=class_names_for("digits:16"))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.tracking.MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id

    r = evaluate(["--config", os.path.join(trained, "config.yaml"), f"model.init={export}", "--tta-flip",
                  "--mlflow-run-id", run_id, f"tracking.uri={uri}", "--json", str(tmp_path / "e.json")])
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "e.json") as f:
        result = json.load(f)
    assert result["tta_flip"] is True and result["val_images"] == 360 and result["weights"] == export
    (top1, top5, loss, n), = LINE.findall(r.stdout)
    assert float(top1) == pytest.approx(100 * result["val_top1"], abs=0.005)
    metrics = client.get_run(run_id).data.metrics
    assert metrics["eval_top1"] == pytest.approx(result["val_top1"]) and metrics["eval_images"] == 360
    assert metrics["eval_loss"] == pytest.approx(result["val_loss"])


def test_evaluate_bad_input_exits_2_with_one_line(trained, tmp_path):
    r = evaluate(["--config", os.path.join(trained, "config.yaml")])
    assert r.returncode == 2 and r.stderr.strip() == ("error: nothing to evaluate: give model.init=PATH (weights, an "
                                                      "export, a run directory) or a run directory")
    r = evaluate([trained, "model.num_classes=5"])  # the data's 10 classes contradict it: refused at load
    assert r.returncode == 2 and r.stderr.startswith("error: model.num_classes=5 but data.train='digits:16' has 10 "
                                                     "classes (0, 1, 2, 3, 4, ...)")
    # random images have no classes to contradict it: the classifier must fit: no re-initialization here
    r = evaluate([trained, "model.num_classes=5", "data.loader=synthetic"])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"error: {trained}/export/model.safetensors: weights do not fit this model")
    assert "fc.weight (10, 256) vs (5, 256)" in r.stderr


def digit_pngs(root, n=6):
    """n sklearn digits as 20x14 px PNGs (not square: the center crop matters), in ImageFolder layout."""
    from sklearn.datasets import load_digits
    d = load_digits()
    paths = []
    for i in range(n):
        folder = os.path.join(root, str(d.target[i]))
        os.makedirs(folder, exist_ok=True)
        grey = np.rint(d.images[i] * 255 / 16).astype(np.uint8)
        path = os.path.join(folder, f"{i:02d}.png")
        Image.fromarray(grey).resize((20, 14), Image.BILINEAR).convert("RGB").save(path)
        paths.append(path)
    return paths


def predict(args, timeout=300):
    return subprocess.run([PYTHON, "-m", "resnext_dist.predict", *args], cwd=REPO, env=env(), capture_output=True,
                          text=True, timeout=timeout)


def test_predict_digits_with_the_validation_preprocessing(trained, tmp_path):
    from resnext_dist.data.sources import ImageFolderSource
    from resnext_dist.data.torchvision import TorchvisionVal
    from resnext_dist.dist import DistInfo

    paths = digit_pngs(str(tmp_path / "imgs"))
    cfg = load_config(os.path.join(trained, "config.yaml"))
    model = models.build_model(cfg.model)
    from resnext_dist.weights import init_model
    init_model(model, trained)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    export = write_export(model, cfg, str(tmp_path / "export"), class_names=names)

    r = predict([export, str(tmp_path / "imgs"), "--top-k", "10", "--json"])
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout)
    assert [x["image"] for x in results] == sorted(paths)

    # What the validation loader makes of the same files, through the model: the same probabilities.
    val = TorchvisionVal(ImageFolderSource(str(tmp_path / "imgs")), cfg.data, DistInfo(), channels_last=False)
    with torch.no_grad():
        probs = torch.cat([model.eval()(images).softmax(1) for images, _ in val])
    for x, expected in zip(results, probs):
        top = x["top"]
        assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)
        assert sum(t["prob"] for t in top) == pytest.approx(1.0, abs=1e-5)
        for t in top:
            assert t["name"] == names[t["class"]]
            assert t["prob"] == pytest.approx(float(expected[t["class"]]), abs=1e-5)

    # A run directory without an export: its config.yaml and final weights; names from its data (digits).
    r = predict([trained, paths[0], "--top-k", "3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.fullmatch(rf"{re.escape(paths[0])}: [0-9] \d+\.\d%, [0-9] \d+\.\d%, [0-9] \d+\.\d%\n", r.stdout)


def test_predict_bad_input(trained, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    r = predict([trained, str(bad)])
    assert r.returncode == 2 and r.stderr.startswith(f"error: {bad}: unreadable image") and r.stdout == ""
    from safetensors.torch import load_file
    plain = tmp_path / "plain.pt"
    torch.save(load_file(os.path.join(trained, "export", "model.safetensors")), plain)
    r = predict([str(plain), str(bad)])  # no architecture with plain weights
    assert r.returncode == 2 and "give --config" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# ---- fail early, never hang (issue 25)


def tiny_export(tmp_path, *extra):
    from tests.tiny import TINY
    cfg = load_config(None, [*TINY, *extra])
    torch.manual_seed(0)
    return write_export(models.build_model(cfg.model), cfg, str(tmp_path / "export")), TINY


def test_evaluate_json_to_a_read_only_path_is_refused_before_the_evaluation(tmp_path):
    from tests.mounts import small_tmpfs

    export, tiny = tiny_export(tmp_path)
    with small_tmpfs(tmp_path / "ro", "64k") as ro:
        assert not os.system(f"mount -o remount,ro {ro}")
        out = os.path.join(ro, "figures", "eval.json")
        r = evaluate([*tiny, f"model.init={export}", "--json", out], timeout=120)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr == f"error: --json {out}: cannot be written: {ro} is not writable by this user\n"
    assert "evaluating" not in r.stdout and not LINE.search(r.stdout)  # said before the work, not after it


def test_predict_on_a_folder_holding_a_fifo_named_like_an_image_exits_2_naming_it(tmp_path):
    export, _ = tiny_export(tmp_path)
    digit_pngs(str(tmp_path / "imgs"), n=2)
    fifo = tmp_path / "imgs" / "x.jpg"
    os.mkfifo(fifo)
    r = predict([export, str(tmp_path / "imgs")], timeout=120)  # it hung here, SIGKILL needed
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"error: {fifo}: a FIFO, not a regular file\n"


def test_predict_refuses_a_hostile_export_in_one_line(tmp_path):
    export, _ = tiny_export(tmp_path)
    paths = digit_pngs(str(tmp_path / "imgs"), n=1)
    meta_file = os.path.join(export, "model.json")
    with open(meta_file) as f:
        meta = json.load(f)
    meta["preprocessing"]["crop_ratio"] = 0  # predicted silently wrong before
    with open(meta_file, "w") as f:
        json.dump(meta, f)
    r = predict([export, paths[0]], timeout=120)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr == (f"error: {meta_file}: preprocessing: data.val_crop_ratio=0: must be in [0.25, 1]\n")

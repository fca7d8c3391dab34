"""Files of a run directory read back are checked against what we write (issue 25): a log.jsonl line, DONE and
config.yaml of another shape are passed over (and said) or refused naming the file, never a crash of whoever reads
them. The hostile values are examples of classes: wrong type, out of range, too long, not
JSON, too deep, not a regular file."""
import json
import os
import threading

import pytest
import yaml

from resnext_dist.config import load_config, to_yaml
from resnext_dist.errors import InputError
from resnext_dist.run import rundir
from resnext_dist.runlog import MAX_LINE, RunLog, read_log, summarize

GOOD = [("step", 1, dict(epoch=0, loss=2.3, lr=0.1, res=16, img_per_s=100.0, data_wait=0.01)),
        ("step", 2, dict(epoch=0, loss=2.2, lr=0.1, res=16, img_per_s=300.0, data_wait=0.01)),
        ("epoch", 2, dict(epoch=0, epoch_time_s=1.5, val_loss=2.0, val_top1=0.25, val_top5=0.5, val_images=50))]

HOSTILE = {  # a line of each class, as a hand edit, another program or a broken disk leaves it
    "epoch as a string": '{"kind": "epoch", "step": 2, "time": 1.0, "epoch": "1", "val_top1": 0.9}',
    "metric as a string": '{"kind": "step", "step": 3, "time": 1.0, "img_per_s": "fast"}',
    "metric as a list": '{"kind": "epoch", "step": 2, "time": 1.0, "epoch": 0, "epoch_time_s": [1]}',
    "bool for a number": '{"kind": "step", "step": 3, "time": 1.0, "loss": true}',
    "negative step": '{"kind": "step", "step": -5, "time": 1.0}',
    "huge step": '{"kind": "step", "step": 100000000000000000000000, "time": 1.0}',
    "float step": '{"kind": "step", "step": 2.5, "time": 1.0}',
    "unknown kind": '{"kind": "nope", "step": 1, "time": 1.0}',
    "no kind": '{"step": 1, "time": 1.0}',
    "time as text": '{"kind": "step", "step": 1, "time": "now"}',
    "infinite time": '{"kind": "step", "step": 1, "time": Infinity}',
    "an array": '[1, 2, 3]',
    "a number": '7',
    "null": 'null',
    "not JSON": '{"kind": "st',
    "not UTF-8": b'{"kind": "\xff\xfe"}',
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "long event name": json.dumps({"kind": "event", "step": 1, "time": 1.0, "event": "x" * 500}),
    "summary epochs as text": '{"kind": "summary", "step": 1, "time": 1.0, "epochs_done": "2"}',
}


def write_log(path, extra_lines):
    log = RunLog(str(path))
    for kind, step, fields in GOOD:
        log.write(kind, step, **fields)
    log.close()
    with open(path, "ab") as f:
        for line in extra_lines:
            f.write((line.encode() if isinstance(line, str) else line) + b"\n")


@pytest.mark.parametrize("name", list(HOSTILE))
def test_a_line_of_another_shape_is_skipped_and_said_and_the_summary_stands(tmp_path, name):
    path = tmp_path / "log.jsonl"
    write_log(path, [HOSTILE[name]])
    skipped = []
    records = read_log(path, skipped)
    assert [(r["kind"], r["step"]) for r in records] == [(k, s) for k, s, _ in GOOD]
    assert len(skipped) == 1 and skipped[0][0] == 4 and skipped[0][1], skipped
    assert summarize(records)["best_val_top1"] == 0.25  # what crashed the epoch end and the summary before


def test_summarize_stands_on_records_missing_the_fields_it_reads():
    s = summarize([{"kind": "step", "step": 1}, {"kind": "step", "step": 2}, {"kind": "epoch", "step": 2},
                   {"kind": "epoch", "step": 3, "val_top1": 0.5}])
    assert s["best_val_top1"] == 0.5 and s["best_epoch"] == 1 and s["mean_img_per_s"] == 0.0


def test_a_line_longer_than_the_limit_is_skipped_without_being_held_and_nan_stays_a_number(tmp_path):
    path = tmp_path / "log.jsonl"
    huge = json.dumps({"kind": "event", "step": 1, "time": 1.0, "event": "x", "blob": "y" * (MAX_LINE + 10)})
    write_log(path, [huge, '{"kind": "step", "step": 3, "time": 1.0, "loss": NaN}'])
    with open(path, "a") as f:
        f.write('{"kind": "step", "st')  # no newline yet
    skipped = []
    records = read_log(path, skipped)
    assert skipped == [(4, f"longer than {MAX_LINE} bytes")]
    assert records[-1]["step"] == 3 and records[-1]["loss"] != records[-1]["loss"]  # a diverged loss is kept
    assert len(records) == len(GOOD) + 1  # the line still being written is not read, nor said


@pytest.mark.parametrize("content, problem", [
    ('{"epochs_done": "1"}', "epochs_done is '1', not an integer"),
    ('{"step": -3, "epochs_done": 1}', "step is -3, not an integer"),
    ('{"step": 1.5}', "step is 1.5"),
    ("[1]", "is [1], not a JSON object"),
    ('"done"', "not a JSON object"),
    ("{not json", "not JSON"),
    ("x" * 5000, "5000 bytes"),
])
def test_a_done_marker_of_another_shape_is_ignored_and_said(tmp_path, content, problem):
    (tmp_path / "DONE").write_text(content)
    problems = []
    assert rundir.read_done(str(tmp_path), problems) is None  # not finished: it is finished again, not crashed
    assert len(problems) == 1 and problems[0].startswith(f"{tmp_path / 'DONE'}: ") and problem in problems[0]
    cfg = load_config(None, [f"run.dir={tmp_path}"])
    assert rundir.finished_for(None, cfg, "1") is False


def test_done_markers_we_write_and_wrote_read_as_before(tmp_path):
    rundir.write_done(str(tmp_path), 64, 2)
    assert rundir.read_done(str(tmp_path)) == {"step": 64, "epochs_done": 2}
    (tmp_path / "DONE").write_text("")  # an older version's empty marker: finished, length unknown
    assert rundir.read_done(str(tmp_path)) == {}
    os.remove(tmp_path / "DONE")
    assert rundir.read_done(str(tmp_path)) is None


def test_a_fifo_in_place_of_a_run_file_is_not_opened_for_reading(tmp_path):
    for name in ("DONE", "config.yaml"):
        os.mkfifo(tmp_path / name)
    done = threading.Event()

    def read():
        with pytest.raises(InputError, match=r"DONE: not a regular file; remove it$"):
            rundir.read_done(str(tmp_path))
        with pytest.raises(InputError, match=r"config.yaml: not a regular file"):
            rundir.read_config(str(tmp_path))
        done.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    assert done.is_set(), "a reader blocked on a FIFO"


@pytest.mark.parametrize("content, problem", [
    ("model: 3\n", "its 'model' is not a mapping"),
    ("- model\n- data\n", "not a mapping"),
    ("model: {arch: resnext50_32x4d}\ntrain: [1, 2]\n", "its 'train' is not a mapping"),
    ("a: &x {b: 1}\nmodel: *x\n", "YAML aliases"),
    ("model: {arch: [unclosed\n", "unreadable run config"),
    ("", "not a mapping"),
])
def test_a_recorded_config_that_cannot_say_the_identity_is_refused_and_kept(tmp_path, content, problem):
    (tmp_path / "config.yaml").write_text(content)
    with pytest.raises(InputError) as info:
        rundir.read_config(str(tmp_path))
    assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}: ") and problem in str(info.value)
    assert (tmp_path / "config.yaml").read_text() == content


def test_an_identity_key_missing_from_the_recorded_config_counts_as_its_default(tmp_path):
    cfg = load_config(None, [f"run.dir={tmp_path}", "model.layers=[1,1,1,1]", "optim.lr=0.5"])
    recorded = yaml.safe_load(to_yaml(cfg))
    del recorded["model"]["layers"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(recorded))  # deleted by hand, or a key added later
    with pytest.raises(InputError, match=r"holds another run \(model.layers: null -> \[1, 1, 1, 1\]\)"):
        rundir.check_identity(cfg, rundir.read_config(str(tmp_path)))
    (tmp_path / "config.yaml").write_text("model: {}\n")  # every other section gone: their keys at default
    with pytest.raises(InputError, match=r"optim.lr: 0.1 -> 0.5"):
        rundir.check_identity(cfg, rundir.read_config(str(tmp_path)))

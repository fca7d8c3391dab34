"""`python -m resnext_dist.bench augment` measures kornia's batched candidates beside ours when kornia imports, and
says "kornia not installed" when it does not (a tiny batch: the table's rows, not the times, are checked)."""
import sys

import pytest

from resnext_dist.bench import augment, augment_kornia

TINY = ["--device", "cpu", "--repeats", "1", "data.batch_size=4", "data.train_res=16"]


def rows_and_output(capsys, out):
    assert augment.run([*TINY, "--out", str(out)]) == 0
    import json

    result = json.loads(out.read_text())
    return [r["measure"] for r in result["rows"]], result, capsys.readouterr().out


@pytest.mark.skipif(not augment_kornia.available(), reason="kornia is not installed here")
def test_kornias_candidates_are_measured_beside_ours(capsys, tmp_path):
    names, result, _ = rows_and_output(capsys, tmp_path / "a.json")
    assert "V2 set (all four but randaugment)" in names and "kornia V2 set (the three above)" in names
    assert len([n for n in names if n.startswith("kornia")]) == 4 and result["summary"]["kornia_v2_set_vs_ours"] > 0


def test_without_kornia_the_bench_says_so(capsys, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kornia", None)  # `import kornia` raises ImportError, as when not installed
    names, result, out = rows_and_output(capsys, tmp_path / "b.json")
    assert not any(n.startswith("kornia") for n in names) and "kornia_v2_set_vs_ours" not in result["summary"]
    assert "note: kornia not installed: its candidates were not measured" in out

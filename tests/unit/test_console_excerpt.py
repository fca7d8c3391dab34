"""launch/console_excerpt.sh cuts the README's console excerpt from a saved console: the banner, an early and the
last step line, the last validation and the summary, put between the markers and nowhere else."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CONSOLE = """resnext_dist: run quickstart: building data and model (2 processes)
resnext_dist 0.1.0 | run quickstart-1a2b3c4d | fresh start
  where     2 processes on 1 node | gloo | cpu
  run dir   runs/quickstart-1a2b3c4d
epoch 1/2 | step 1/4 | loss 2.304 | lr 0.004 | 2 img/s | data wait 91.2% | mem 1.4 GB
epoch 1/2 | step 2/4 | loss 1.954 | lr 0.057 | 112 img/s | data wait 3.0% | mem 1.4 GB
epoch 1/2 done in 6 s
  val top-1 50.00% | top-5 90.00% | loss 1.000 (360 images)
epoch 2/2 | step 4/4 | loss 0.011 | lr 0 | 217 img/s | data wait 2.1% | mem 1.4 GB
epoch 2/2 done in 6 s
  val top-1 98.89% | top-5 100.00% | loss 0.053 (360 images)
done in 12 s | best val top-1 98.89% (epoch 2) | final 98.89% | 141 img/s mean | 2 epochs, 4 steps
  weights   runs/quickstart-1a2b3c4d/export/model.safetensors
  log       runs/quickstart-1a2b3c4d/log.jsonl
"""

EXPECTED = """resnext_dist 0.1.0 | run quickstart-1a2b3c4d | fresh start
  where     2 processes on 1 node | gloo | cpu
  run dir   runs/quickstart-1a2b3c4d
epoch 1/2 | step 2/4 | loss 1.954 | lr 0.057 | 112 img/s | data wait 3.0% | mem 1.4 GB
...
epoch 2/2 | step 4/4 | loss 0.011 | lr 0 | 217 img/s | data wait 2.1% | mem 1.4 GB
epoch 2/2 done in 6 s
  val top-1 98.89% | top-5 100.00% | loss 0.053 (360 images)
done in 12 s | best val top-1 98.89% (epoch 2) | final 98.89% | 141 img/s mean | 2 epochs, 4 steps
  weights   runs/quickstart-1a2b3c4d/export/model.safetensors
  log       runs/quickstart-1a2b3c4d/log.jsonl
"""


def test_excerpt_goes_between_the_markers(tmp_path):
    (tmp_path / "launch").mkdir()
    shutil.copy(ROOT / "launch" / "console_excerpt.sh", tmp_path / "launch")
    (tmp_path / "README.md").write_text("# x\nbefore\n<!-- console-excerpt:begin -->\n```text\nold\n```\n"
                                        "<!-- console-excerpt:end -->\nafter\n")
    (tmp_path / "console.txt").write_text(CONSOLE)
    subprocess.run(["bash", str(tmp_path / "launch" / "console_excerpt.sh"), "--from", str(tmp_path / "console.txt")],
                   check=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    assert (tmp_path / "README.md").read_text() == (
        "# x\nbefore\n<!-- console-excerpt:begin -->\n```text\n" + EXPECTED + "```\n<!-- console-excerpt:end -->\nafter\n")


def test_the_readme_has_the_markers():
    text = (ROOT / "README.md").read_text()
    assert text.count("<!-- console-excerpt:begin -->") == 1 and text.count("<!-- console-excerpt:end -->") == 1

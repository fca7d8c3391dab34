#!/usr/bin/env bash
# Regenerate docs/console-excerpt.txt (what the main command prints) and the excerpt of it in README.md.
#
#   bash launch/console_excerpt.sh                 # train the quickstart afresh (under a minute on 2 CPU cores)
#   bash launch/console_excerpt.sh --from FILE      # only re-cut the README excerpt from a saved console
#   bash launch/console_excerpt.sh key=value ...    # the same, with overrides passed to the trainer
#
# It runs the README's main command as a newcomer would, `torchrun --nproc_per_node=2 -m resnext_dist.train`
# with no --config (the embedded quickstart), from an empty scratch directory, so the run starts fresh and
# its runs/ folder (run directory, MLflow store) lands there, never in the repository. Only stdout is kept:
# that is what the console shows (warnings and MLflow's own log lines go to stderr). The scratch directory's
# path is cut from the text, so paths read as they would for someone who trained in their own folder.
# The README excerpt is the banner, an early and the last step line, the last validation and the summary,
# between the lines `<!-- console-excerpt:begin -->` and `<!-- console-excerpt:end -->`.
#
# Settings: PYTHON (default .venv/bin/python), NPROC (default 2).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
NPROC="${NPROC:-2}"
OUT="$REPO/docs/console-excerpt.txt"

if [ "${1:-}" = "--from" ]; then
  capture="${2:?--from needs a file}"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  raw="$work/console.raw"
  echo "console_excerpt: training the quickstart in $work (stdout -> $OUT)" >&2
  # The same thread share launch/quickstart.py gives each process on a CPU (torchrun's default is 1).
  cores="$(nproc)"
  threads=$((cores / NPROC > 0 ? cores / NPROC : 1))
  (cd "$work" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-$threads}" \
    "$PY" -m torch.distributed.run --standalone --nproc_per_node="$NPROC" -m resnext_dist.train "$@" >"$raw")
  capture="$work/console.txt"
  # "$work/" -> "": paths relative to the folder the command ran in (sqlite:////tmp/x/runs -> sqlite:///runs).
  sed "s#$work/##g" "$raw" >"$capture"
  mkdir -p "$REPO/docs"
  cp "$capture" "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
  echo "console_excerpt: wrote $OUT" >&2
fi

"$PY" - "$capture" "$REPO/README.md" <<'EOF'
"""Cut the README's excerpt from a console capture and put it between the markers (atomically)."""
import os
import re
import sys

capture, readme = sys.argv[1], sys.argv[2]
lines = open(capture).read().splitlines()
first = next(i for i, l in enumerate(lines) if re.match(r"resnext_dist \S+ \| run ", l))      # the banner
steps = [i for i, l in enumerate(lines) if re.match(r"epoch \d+/\d+ \| step ", l)]
dones = [i for i, l in enumerate(lines) if re.match(r"epoch \d+/\d+ done", l)]
end = next(i for i, l in enumerate(lines) if l.startswith("done in "))                        # the summary
summary = [end] + [i for i in range(end + 1, len(lines)) if lines[i].startswith("  ")]
# the first regular interval (step 1's line also counts start-up: its img/s and data wait say little)
shown = steps[1] if len(steps) > 2 else steps[0]
keep = list(range(first, steps[0])) + [shown, None, steps[-1], dones[-1], dones[-1] + 1] + summary
excerpt = "\n".join("..." if i is None else lines[i] for i in keep)

text = open(readme).read()
begin, stop = "<!-- console-excerpt:begin -->\n", "<!-- console-excerpt:end -->"
a, b = text.index(begin) + len(begin), text.index(stop)
text = text[:a] + "```text\n" + excerpt + "\n```\n" + text[b:]
with open(readme + ".tmp", "w") as f:
    f.write(text)
os.replace(readme + ".tmp", readme)
print(f"console_excerpt: README.md excerpt: {len(keep)} lines", file=sys.stderr)
EOF

#!/usr/bin/env bash
# Set up resnext_dist on a Debian/Ubuntu machine: system packages (when root), a .venv in the
# repo root with the pinned versions from constraints.txt, and the package itself (editable).
#
#   bash launch/setup.sh          # what training needs
#   bash launch/setup.sh --dev    # plus what the tests need (pytest, Slurm + munge, Chromium)
#
# Running it twice is fast and changes nothing: each step checks before it acts.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1
PY=${PYTHON:-python3}

# --- system packages -------------------------------------------------------------------------
# FFCV compiles against libturbojpeg and OpenCV (found through pkg-config); our partial JPEG decoder
# (resnext_dist/data/_cropdecode.c, built by pip install -e .) against libjpeg.
APT_PKGS="libturbojpeg0-dev libopencv-dev pkg-config libjpeg-dev"
# The tests run a real Slurm cluster (munge + slurmctld + slurmd) and a headless browser.
[ $DEV = 1 ] && APT_PKGS="$APT_PKGS munge slurmctld slurmd slurm-client chromium"
missing=""
for p in $APT_PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "setup: missing system packages; run as root:  apt-get install$missing" >&2
    exit 1
  fi
fi

# --- virtual environment ---------------------------------------------------------------------
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/python -m pip"
stamp=.venv/.resnext_dist-setup
want="$(cat constraints.txt setup.cfg setup.py resnext_dist/data/_cropdecode.c) dev=$DEV"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi
$PIP install -q --upgrade pip setuptools wheel
# torch first, alone: these exact builds lie on this machine's disk; any other version is a big download.
$PIP install -q -c constraints.txt torch torchvision
# FFCV's build imports numpy and needs pkg-config to find opencv4 and libturbojpeg.
$PIP install -q -c constraints.txt numpy cython
extras="ffcv"
[ $DEV = 1 ] && extras="ffcv,dev"
$PIP install -q -c constraints.txt --no-build-isolation -e ".[${extras}]"
echo "$want" > "$stamp"
echo "setup: done (.venv/bin/python)"

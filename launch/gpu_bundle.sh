#!/usr/bin/env bash
# Build .gpu/: what an air-gapped GPU host with its own Python 3.12 + torch lacks to run resnext_dist
# (docs/performance.md, "The GPU host"). Run it here, on the build machine, from a
# checkout whose .venv has FFCV built (bash launch/setup.sh); copy the checkout with .gpu/ to the host; there:
#
#   export PYTHONPATH=$PWD/.gpu/site:$PWD LD_LIBRARY_PATH=$PWD/.gpu/lib:$LD_LIBRARY_PATH PYTHONUNBUFFERED=1
#   bash launch/gpu_bench.sh          # does those exports itself
#
# What goes in (.gpu/ is git-ignored; the build replaces it whole):
#   .gpu/site/ffcv, .gpu/site/assertpy   copied from the venv with their dist-info (no __pycache__, no
#                                        ffcv/benchmarks); the compiled
#                                        _libffcv gets a second name with the 3.12 ABI tag (FFCV loads it through
#                                        ctypes, so only the import name has to match the host's Python)
#   .gpu/lib/*.so*                       every library ldd lists for _libffcv (libturbojpeg, OpenCV, ...) and for
#                                        our partial JPEG decoder (libjpeg), except the C/C++ runtime every host
#                                        has (libc, libm, libstdc++, libgcc_s, ld-linux)
#   .gpu/native/_cropdecode.abi3.so      resnext_dist/data/_cropdecode (data.crop_decode), built by pip install -e .;
#                                        git ignores it, so gpu_bench.sh copies it back into the package there
#   .gpu/site/distutils/                 a two-file shim: Python 3.12 has no distutils, FFCV imports distutils.log.warn
#   .gpu/site/{omegaconf,antlr4,submitit,cloudpickle,...}
#                                        pure-Python wheels at the versions in constraints.txt, installed with
#                                        --target (no compiled code, so they work on any Python 3)
# The host must already have torch, torchvision, numpy, numba, opencv-python-headless, tqdm, pyyaml, pillow.
# mlflow is left out (large, and bench runs use tracking.enabled=false).
#
#   bash launch/gpu_bundle.sh [--py-tag cpython-312]     # PYTHON=path/to/python picks the venv (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PY_TAG=cpython-312
[ "${1:-}" = "--py-tag" ] && PY_TAG=$2
OUT=.gpu
# Pure-Python packages the trainer needs that the host lacks, and what they pull in.
WHEELS="omegaconf antlr4-python3-runtime submitit cloudpickle"

die() { echo "gpu_bundle: $*" >&2; exit 2; }
[ -x "$PY" ] || die "$PY: no such Python (run bash launch/setup.sh first, or set PYTHON=)"
FFCV_DIR=$("$PY" -c "import os, ffcv; print(os.path.dirname(ffcv.__file__))" 2>/dev/null) \
  || die "FFCV is not importable with $PY (bash launch/setup.sh builds it)"
ASSERTPY_DIR=$("$PY" -c "import os, assertpy; print(os.path.dirname(assertpy.__file__))") \
  || die "assertpy is not importable with $PY"
SO=$(ls "$FFCV_DIR"/_libffcv.cpython-*-x86_64-linux-gnu.so 2>/dev/null | head -n1)
[ -n "$SO" ] || die "$FFCV_DIR: no compiled _libffcv.cpython-*.so"
CROPDECODE=$(ls resnext_dist/data/_cropdecode*.so 2>/dev/null | head -n1)
[ -n "$CROPDECODE" ] || die "resnext_dist/data/_cropdecode*.so is not built (bash launch/setup.sh builds it; needs libjpeg-dev)"
command -v ldd >/dev/null || die "ldd not found"

# Build into a fresh folder beside the old bundle and swap at the end: a failed build leaves the old one.
tmp=$(mktemp -d "$PWD/.gpu.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/site" "$tmp/lib" "$tmp/wheels"

# --- 1. FFCV and assertpy, without caches and FFCV's benchmark suite
cp -r "$FFCV_DIR" "$tmp/site/ffcv"
cp -r "$ASSERTPY_DIR" "$tmp/site/assertpy"
# their metadata too, so version lookups (provenance tags, bench JSON) name the FFCV release on the host
cp -r "$(dirname "$FFCV_DIR")"/ffcv-*.dist-info "$(dirname "$ASSERTPY_DIR")"/assertpy-*.dist-info "$tmp/site/"
rm -rf "$tmp/site/ffcv/benchmarks"
find "$tmp/site" -name __pycache__ -type d -prune -exec rm -rf {} +

# --- 2. the compiled library under the host Python's import name (the original name stays for this Python)
so_name=$(basename "$SO")
target_name="_libffcv.${PY_TAG}-x86_64-linux-gnu.so"
[ "$so_name" = "$target_name" ] || cp "$SO" "$tmp/site/ffcv/$target_name"

# --- 3. the shared libraries they link, minus the C/C++ runtime (resolved paths, copied under their sonames)
n_libs=0
copy_libs() {  # SO: copy what ldd lists for it into $tmp/lib
  local name arrow path _
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    case "$name" in
      libc.so.*|libm.so.*|libstdc++.so.*|libgcc_s.so.*|ld-linux*|linux-vdso*) continue ;;
    esac
    [ -f "$path" ] || die "ldd: $name => $path: not found (install the build dependencies: launch/setup.sh)"
    [ -f "$tmp/lib/$name" ] || n_libs=$((n_libs + 1))
    cp -L "$path" "$tmp/lib/$name"
  done < <(ldd "$1")
  local missing
  missing=$(ldd "$1" | grep "not found" || true)
  [ -z "$missing" ] || die "ldd $1: missing libraries: $missing"
}
copy_libs "$SO"
copy_libs "$CROPDECODE"
# our crop decoder (abi3: loads in the host's Python as it is); gpu_bench.sh puts it in the package
mkdir -p "$tmp/native"
cp "$CROPDECODE" "$tmp/native/"

# --- 4. distutils shim for Python >= 3.12
mkdir -p "$tmp/site/distutils"
printf '"""Shim: Python 3.12 dropped distutils; FFCV only uses distutils.log.warn."""\n' \
  > "$tmp/site/distutils/__init__.py"
printf '"""Shim for FFCV (ffcv/pipeline/graph.py imports distutils.log.warn)."""\nfrom logging import warning as warn  # noqa: F401\n' \
  > "$tmp/site/distutils/log.py"

# --- 5. pure-Python wheels at the tested versions (downloaded, or built from an sdist like antlr4's)
pins=""
for pkg in $WHEELS; do
  pin=$(grep -i "^${pkg}==" constraints.txt || true)
  [ -n "$pin" ] || die "constraints.txt has no pin for $pkg"
  pins="$pins $pin"
done
# shellcheck disable=SC2086
"$PY" -m pip wheel -q --no-deps --wheel-dir "$tmp/wheels" $pins
for whl in "$tmp"/wheels/*.whl; do
  case "$whl" in *-py3-none-any.whl|*-py2.py3-none-any.whl) ;; *) die "$(basename "$whl") is not pure Python" ;; esac
done
"$PY" -m pip install -q --no-index --no-deps --no-compile --target "$tmp/site" "$tmp"/wheels/*.whl
rm -rf "$tmp/site/bin"
find "$tmp/site" -name __pycache__ -type d -prune -exec rm -rf {} +

# --- swap in
rm -rf "$tmp/wheels"
rm -rf "$OUT"
mv "$tmp" "$OUT"
trap - EXIT
size=$(du -sh "$OUT" | cut -f1)
echo "gpu_bundle: $OUT ($size): ffcv ($so_name + $target_name), $(basename "$CROPDECODE"), $n_libs libraries in" \
     "$OUT/lib, distutils shim," \
     "wheels:$pins"
echo "gpu_bundle: on the host: export PYTHONPATH=\$PWD/$OUT/site:\$PWD LD_LIBRARY_PATH=\$PWD/$OUT/lib:\$LD_LIBRARY_PATH"

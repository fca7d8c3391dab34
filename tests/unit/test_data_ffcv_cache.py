"""data/ffcv_cache.py: the numba typed-Dict functions that `import ffcv` compiles come, in a second process, from
numba's disk cache (no compile). Checked on a typed Dict filled as ffcv.fields.rgb_image fills IMAGE_MODES, in
fresh interpreters (numba's cache is per process), without importing FFCV itself (seconds of torch import)."""
import json
import subprocess
import sys

import pytest

pytest.importorskip("numba")

PROBE = """
import json, sys
if sys.argv[1] == "cached":
    import resnext_dist.data.ffcv_cache  # what the FFCV modules import first
from numba.core.registry import CPUDispatcher
from numba.typed import Dict, dictobject, typeddict
modes = Dict()  # as ffcv.fields.rgb_image at import
modes["jpg"] = 0
modes["raw"] = 1
fns = [f for m in (typeddict, dictobject) for f in vars(m).values() if isinstance(f, CPUDispatcher)]
print(json.dumps({"hits": sum(len(f.stats.cache_hits) for f in fns),
                  "misses": sum(len(f.stats.cache_misses) for f in fns),
                  "compiled": sum(len(f.overloads) for f in fns)}))
"""


def typed_dict_in_a_fresh_process(mode, cache_dir):
    env = {"NUMBA_CACHE_DIR": str(cache_dir), "PATH": "/usr/bin:/bin"}
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_typed_dict_functions_ffcv_compiles_come_from_the_disk_cache_in_the_next_process(tmp_path):
    first = typed_dict_in_a_fresh_process("cached", tmp_path)
    assert first["compiled"] > 0 and first["misses"] > 0 and first["hits"] == 0  # compiled, then saved
    assert any(tmp_path.rglob("*.nbi")), "nothing written to NUMBA_CACHE_DIR"
    second = typed_dict_in_a_fresh_process("cached", tmp_path)
    assert second["hits"] == first["compiled"] and second["misses"] == 0, (first, second)  # loaded, none compiled

"""data.decode=gpu's one-launch resize (resnext_dist/data/resize_kernel.py) in Triton's interpreter on the CPU
(tests/kernel_interpreted.py): the same pixels as the reference path it replaces on a GPU, a batch of JPEG and raw
images (mixed sizes; whole-image, 1 x 1, one-row and one-column crops; flips; channels-last or not) in a number of
torch ops that does not grow with the batch, and a corrupt JPEG still named."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def interpreted():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": ROOT}
    done = subprocess.run([sys.executable, "-m", "tests.kernel_interpreted"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_kernel_gives_the_reference_paths_pixels(interpreted):
    assert set(interpreted["max_abs_diff"]) == {"n4_res12", "n4_res5", "n6_res12", "n6_res5"}
    for case, diff in interpreted["max_abs_diff"].items():
        assert diff <= 1e-5, case  # float rounding at most (values are normalized: about -2.1..2.6)


def test_a_batch_is_a_handful_of_ops_however_many_images_it_holds(interpreted):
    kernel, reference = interpreted["kernel_ops"], interpreted["reference_ops"]
    # the reference copies each crop on its own (a kernel per image on a GPU): the count can see that
    assert reference["n6_res12"] >= reference["n4_res12"] + 2
    assert kernel["n4_res12"] == kernel["n6_res12"] and kernel["n4_res5"] == kernel["n6_res5"]
    assert kernel["n6_res12"] <= 3, kernel  # the decode, the output, the launch (+ 2 copies on a GPU)


def test_a_corrupt_stored_jpeg_is_named_on_the_kernel_path_too(interpreted):
    assert interpreted["corrupt"] is not None
    assert "x.beton: image 2: its stored JPEG does not decode" in interpreted["corrupt"]


def test_the_kernel_compiles_for_an_h100_without_one():
    """Triton's interpreter forgives what its compiler may not (pointer casts, loops over loaded bounds): compile
    the kernel here, as a CUDA host would at its first batch, down to an sm_90 binary."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from resnext_dist.data import resize_kernel

    signature = {"table": "*i64", "out": "*fp32", "scale": "*fp32", "shift": "*fp32", "res": "i32",
                 "out_sn": "i32", "out_sc": "i32", "out_sy": "i32", "out_sx": "i32", "BLOCK": "constexpr"}
    source = ASTSource(triton.jit(resize_kernel._body), signature, constexprs={"BLOCK": 256})
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert ".target sm_90" in compiled.asm["ptx"] and len(compiled.asm["cubin"]) > 1000


def test_a_raw_image_shorter_than_its_header_says_is_named_not_read_past(interpreted):
    for kernel, error in interpreted["raw_too_short"].items():
        assert error is not None and "x.beton: image 1: its raw pixels are" in error, kernel

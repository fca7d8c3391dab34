"""`bench decode`: data.decode=gpu's host work per batch, the reference resize against the one-launch kernel path
(the plumbing of the figures, not a timing)."""
import json


def test_bench_decode_times_both_resizes_and_the_kernel_path_dispatches_fewer_ops(tmp_path, capsys):
    from resnext_dist.bench import main

    out = tmp_path / "decode.json"
    assert main(["decode", "--images", "16", "--photo-size", "40x48", "--write-modes", "jpg,proportion",
                 "--batches", "2", "--repeats", "1", "--warmup", "0", "--threads", "1", "data.batch_size=8",
                 "data.train_res=24", "--workdir", str(tmp_path / "w"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {(r["write_mode"], r["resize"]): r for r in result["rows"]}
    assert sorted(rows) == [("jpg", "kernel"), ("jpg", "reference"), ("proportion", "kernel"),
                            ("proportion", "reference")]
    for mode in ("jpg", "proportion"):
        kernel, reference = rows[mode, "kernel"], rows[mode, "reference"]
        # the reference copies each crop (ops grow with the batch); the kernel path: its JPEGs' wrappers + a few
        assert kernel["ops"] < reference["ops"] and reference["ops"] > 3 * 8
        assert not kernel["launch_run"] and reference["launch_run"]  # no CUDA here: said, not hidden
        assert result["summary"][f"host_ms_kernel_vs_reference_{mode}"] == \
            kernel["host_ms"] / reference["host_ms"]
    assert "(launch not run: no CUDA)" in capsys.readouterr().out


def test_bench_decode_refuses_an_unknown_resize(capsys):
    from resnext_dist.bench import main

    assert main(["decode", "--resize", "bicubic"]) == 2
    assert capsys.readouterr().err.strip() == "error: --resize 'bicubic': choose from reference, kernel"

"""The .beton writer CLI: every source, the write modes, atomic output, and every bad-input case."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from resnext_dist.data.sources import DigitsSource, ImageFolderSource
from resnext_dist.data.write import main
from tests.data_helpers import make_cifar_folder, make_image_folder


def read_beton(path):
    from ffcv.reader import Reader

    r = Reader(str(path))
    return r.metadata["f0"], r.metadata["f1"]  # image (mode, width, height, ptr), label


def write_cli(*args):
    return main(["--workers", "1", *map(str, args)])


def files_in(folder):
    return sorted(os.listdir(folder))


def test_digits_source_writes_its_split_with_labels_in_order(tmp_path, capsys):
    out = tmp_path / "d" / "digits_val.beton"  # the folder is created
    assert write_cli("--source", "digits", "--split", "val", "--size", "16", "--output", out) == 0
    images, labels = read_beton(out)
    assert list(labels) == list(DigitsSource("val").labels) and len(labels) == 360
    assert set(images["width"]) == {16} and set(images["mode"]) == {1}  # small: smart mode keeps raw
    assert f"wrote 360 images (10 classes) to {out}" in capsys.readouterr().out
    assert files_in(tmp_path / "d") == ["digits_val.beton", "digits_val.classes.json"]  # + the class names


def test_cifar_source_writes_the_test_batches_as_val(tmp_path):
    _, val_labels = make_cifar_folder(tmp_path / "c100", kind="cifar100")
    out = tmp_path / "c.beton"
    assert write_cli("--source", "cifar", "--input", tmp_path / "c100", "--split", "val", "--output", out) == 0
    assert list(read_beton(out)[1]) == val_labels


def test_synthetic_source_and_subset(tmp_path):
    out = tmp_path / "s.beton"
    assert write_cli("--source", "synthetic", "--num-images", 50, "--num-classes", 7, "--size", 20,
                     "--subset", 9, "--output", out) == 0
    images, labels = read_beton(out)
    assert len(labels) == 9 and labels.max() < 7 and set(images["height"]) == {20}


@pytest.mark.parametrize("mode,expected", [("raw", {1}), ("jpg", {0}), ("smart", {0, 1})])
def test_write_modes(tmp_path, mode, expected):
    root = tmp_path / "tree"
    make_image_folder(root, classes=("small",), per_class=2, size=(20, 20))
    make_image_folder(root, classes=("big",), per_class=2, size=(300, 300), seed=1)
    out = tmp_path / f"{mode}.beton"
    assert write_cli("--source", "imagefolder", "--input", root, "--write-mode", mode, "--output", out) == 0
    images, _ = read_beton(out)
    assert set(images["mode"]) == expected  # smart: 300x300 is above the 256x256 threshold
    if mode == "smart":
        assert list(images["mode"]) == [0, 0, 1, 1]  # classes sorted: big first


def test_max_resolution_shrinks_the_longer_side(tmp_path):
    make_image_folder(tmp_path / "t", classes=("a",), per_class=1, size=(90, 60))
    out = tmp_path / "o.beton"
    assert write_cli("--source", "imagefolder", "--input", tmp_path / "t", "--max-resolution", 45,
                     "--output", out) == 0
    images, _ = read_beton(out)
    assert (images["width"][0], images["height"][0]) == (45, 30)


def test_imagefolder_split_reads_input_slash_split(tmp_path):
    make_image_folder(tmp_path / "imagenet" / "val", classes=("a", "b"), per_class=1)
    out = tmp_path / "v.beton"
    assert write_cli("--source", "imagefolder", "--input", tmp_path / "imagenet", "--split", "val",
                     "--output", out) == 0
    assert list(read_beton(out)[1]) == [0, 1]


# ----------------------------------------------------------------------------------------------
# Bad input: exit 2, one line naming the culprit, nothing (half-)written


def expect_bad_input(capsys, args, culprit, out_dir):
    before = files_in(out_dir)
    assert write_cli(*args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(culprit) in err[0], err
    assert files_in(out_dir) == before  # no output, no temporary file
    return err[0]


def test_missing_source_directory(tmp_path, capsys):
    expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "nope", "--output",
                              tmp_path / "o.beton"], tmp_path / "nope", tmp_path)


def test_empty_source_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    line = expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "empty", "--output",
                                     tmp_path / "o.beton"], tmp_path / "empty", tmp_path)
    assert "no class folders" in line


def test_class_folder_without_images(tmp_path, capsys):
    make_image_folder(tmp_path / "t", classes=("a",), per_class=1)
    (tmp_path / "t" / "b").mkdir()
    (tmp_path / "t" / "b" / "readme.txt").write_text("no images here")
    expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "t", "--output",
                              tmp_path / "o.beton"], tmp_path / "t" / "b", tmp_path)


def test_corrupt_image_is_fatal_and_named_and_nothing_is_left(tmp_path, capsys):
    make_image_folder(tmp_path / "t", classes=("a", "b"), per_class=30, ext="jpg")
    bad = tmp_path / "t" / "b" / "017.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    line = expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "t", "--output",
                                     out_dir / "o.beton", "--chunk-size", 5], bad, out_dir)
    assert "unreadable image" in line


def test_skip_corrupt_leaves_unreadable_images_out_and_lists_them(tmp_path, capsys):
    made = make_image_folder(tmp_path / "t", classes=("a", "b"), per_class=3)
    bad = tmp_path / "t" / "a" / "001.png"
    bad.write_bytes(b"garbage")
    out = tmp_path / "o.beton"
    assert write_cli("--source", "imagefolder", "--input", tmp_path / "t", "--skip-corrupt", "--output", out) == 0
    err = capsys.readouterr().err
    assert "skipped 1 unreadable image(s) of 6" in err and str(bad) in err
    assert list(read_beton(out)[1]) == [0, 0, 1, 1, 1]
    assert len(made) == 6


def test_existing_output_is_kept_without_force_and_replaced_with_it(tmp_path, capsys):
    out = tmp_path / "o.beton"
    out.write_bytes(b"precious")
    expect_bad_input(capsys, ["--source", "digits", "--output", out], out, tmp_path)
    assert out.read_bytes() == b"precious"
    assert write_cli("--source", "digits", "--split", "val", "--output", out, "--force") == 0
    assert len(read_beton(out)[1]) == 360


def test_image_larger_than_a_page_is_named_instead_of_hanging_the_writer(tmp_path, capsys):
    make_image_folder(tmp_path / "t", classes=("a",), per_class=1, size=(1000, 800))  # 2.4 MB raw
    line = expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "t", "--write-mode", "raw",
                                     "--page-size", 2, "--output", tmp_path / "o.beton"],
                            tmp_path / "t" / "a" / "000.png", tmp_path)
    assert "page size" in line


@pytest.mark.parametrize("args,culprit", [
    (["--source", "imagefolder"], "--input"),
    (["--source", "digits", "--jpeg-quality", "0"], "JPEG quality 0"),
    (["--source", "digits", "--compress-probability", "1.5"], "compress probability 1.5"),
    (["--source", "digits", "--size", "3"], "size 3"),
    (["--source", "digits", "--page-size", "3"], "page size"),
    (["--source", "synthetic", "--num-images", "0"], "num_images=0"),
])
def test_bad_options(tmp_path, capsys, args, culprit):
    expect_bad_input(capsys, [*args, "--output", tmp_path / "o.beton"], culprit, tmp_path)


def test_bad_cifar_folder(tmp_path, capsys):
    make_cifar_folder(tmp_path / "c")
    (tmp_path / "c" / "test_batch").write_bytes(b"\x80\x04garbage")
    expect_bad_input(capsys, ["--source", "cifar", "--input", tmp_path / "c", "--split", "val", "--output",
                              tmp_path / "o.beton"], tmp_path / "c" / "test_batch", tmp_path)


def test_module_entry_point_help_and_exit_code(tmp_path):
    from tests.tiny import REPO

    run = lambda *a: subprocess.run([sys.executable, "-m", "resnext_dist.data.write", *map(str, a)], cwd=REPO,
                                    capture_output=True, text=True, timeout=120)
    helped = run("--help")
    assert helped.returncode == 0 and "--write-mode" in helped.stdout and "--max-resolution" in helped.stdout
    bad = run("--source", "imagefolder", "--input", tmp_path / "nope", "--output", tmp_path / "o.beton")
    assert bad.returncode == 2 and bad.stderr.strip() == f"error: {tmp_path / 'nope'}: no such directory"


# ----------------------------------------------------------------------------------------------
# Pixels through the writer and FFCV's decoders


def val_pixels(beton, res, ratio, batch=8, crop_decode=True):
    """Every image of `beton`, center-crop decoded by the FFCV val loader, as uint8 NHWC, in order."""
    from resnext_dist.data.ffcv import FfcvVal
    from resnext_dist.dist import DistInfo
    from tests.data_helpers import data_cfg, unnormalize

    from ffcv.reader import Reader

    n = Reader(str(beton)).num_samples
    val = FfcvVal(str(beton), data_cfg(batch_size=batch, val_res=res, val_crop_ratio=ratio, crop_decode=crop_decode),
                  DistInfo(), channels_last=True, num_images=n)
    return np.concatenate([unnormalize(x) for x, _ in val])


def test_raw_mode_round_trip_is_exact(tmp_path):
    made = make_image_folder(tmp_path / "t", classes=("a", "b", "c"), per_class=5, size=(24, 24))
    write_cli("--source", "imagefolder", "--input", tmp_path / "t", "--write-mode", "raw", "--output",
              tmp_path / "raw.beton")
    source = ImageFolderSource(str(tmp_path / "t"))
    decoded = val_pixels(tmp_path / "raw.beton", res=24, ratio=1.0)  # the whole image at its own size
    expected = np.stack([made[source.describe(i)][0] for i in range(len(source))])
    assert np.array_equal(decoded, expected)


def photos():
    from sklearn.datasets import load_sample_images

    return load_sample_images().images  # two 427x640 photographs


def reference_center_crop(photo, res, ratio):
    """What the FFCV val decoder should produce: the centered square of side int(ratio * shorter side)
    (offsets rounded down), resized with PIL's box filter (OpenCV's INTER_AREA when shrinking)."""
    h, w = photo.shape[:2]
    c = int(ratio * min(h, w))
    top, left = (h - c) // 2, (w - c) // 2
    crop = Image.fromarray(photo).crop((left, top, left + c, top + c))
    return np.asarray(crop.resize((res, res), Image.BOX), dtype=np.int16)


# Tolerances, in levels of 255 over all pixels of both photos. FFCV resizes with OpenCV's INTER_AREA,
# which is not quite PIL's box filter at non-integer scales (373 -> 160 px here): measured 1.95 mean and
# 29 at the 99.9th percentile on raw pixels, 3.05 and 33 after JPEG at quality 90 (FFCV decodes with
# libjpeg-turbo's fast DCT). The crop box itself is exact: raw pixels equal OpenCV's resize of it (the
# second assertion), and a box off by a single pixel already gives a mean error of 4.5-6.8.
TOLERANCE = {"raw": (2.2, 35), "jpg": (3.5, 40)}  # (mean absolute error, 99.9th percentile)


@pytest.mark.parametrize("mode", ["raw", "jpg"])
def test_center_crop_decode_matches_a_pil_reference_on_real_photos(tmp_path, mode):
    root = tmp_path / "photos" / "x"
    root.mkdir(parents=True)
    for i, photo in enumerate(photos()):
        Image.fromarray(photo).save(root / f"{i}.png")
    beton = tmp_path / f"{mode}.beton"
    write_cli("--source", "imagefolder", "--input", tmp_path / "photos", "--write-mode", mode,
              "--jpeg-quality", 90, "--output", beton)
    decoded = val_pixels(beton, res=160, ratio=0.875).astype(np.int16)
    reference = np.stack([reference_center_crop(p, 160, 0.875) for p in photos()])
    error = np.abs(decoded - reference)
    mean_limit, p999_limit = TOLERANCE[mode]
    assert error.mean() <= mean_limit and np.percentile(error, 99.9) <= p999_limit, \
        (mode, error.mean(), np.percentile(error, 99.9))
    if mode == "raw":
        import cv2

        h, w = photos()[0].shape[:2]
        c = int(0.875 * min(h, w))
        top, left = (h - c) // 2, (w - c) // 2
        exact = np.stack([cv2.resize(p[top:top + c, left:left + c], (160, 160), interpolation=cv2.INTER_AREA)
                          for p in photos()])
        # data.crop_decode's INTER_AREA: OpenCV's weights, float rounding apart; FFCV's own decoder: OpenCV's call
        assert np.abs(decoded - exact).max() <= 1
        assert np.array_equal(val_pixels(beton, res=160, ratio=0.875, crop_decode=False), exact)


# ----------------------------------------------------------------------------------------------
# A full disk, Ctrl-C and SIGTERM: one line, no temporary file, no process left behind


def writer_process(*args):
    """The writer CLI in its own session (so every process it starts can be found afterwards)."""
    from tests.tiny import REPO, env

    return subprocess.Popen([sys.executable, "-m", "resnext_dist.data.write", *map(str, args)], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_full_disk_exits_2_with_one_line_and_leaves_nothing_behind(tmp_path):
    from tests.mounts import small_tmpfs, wait_session_empty

    make_image_folder(tmp_path / "t", classes=("a", "b"), per_class=4, size=(32, 32))
    with small_tmpfs(tmp_path / "disk", "300k") as disk:
        out = os.path.join(disk, "o.beton")
        p = writer_process("--source", "imagefolder", "--input", tmp_path / "t", "--workers", 2, "--output", out)
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 2, stderr
        assert stderr.strip() == f"error: no space left on device writing {out}"
        assert os.listdir(disk) == []  # neither the output nor the temporary file
        assert wait_session_empty(p.pid) == []


@pytest.mark.parametrize("sig,to_group", [(signal.SIGINT, True), (signal.SIGTERM, False)], ids=["ctrl-c", "sigterm"])
def test_signal_while_writing_stops_promptly_and_cleans_up(tmp_path, sig, to_group):
    from tests.mounts import session_pids, wait_session_empty

    out = tmp_path / "o.beton"
    p = writer_process("--source", "synthetic", "--num-images", 200000, "--size", 64, "--workers", 2,
                       "--output", out)
    try:
        deadline = time.monotonic() + 60
        # writing: the temporary file exists and the writer processes run
        while not ([f for f in os.listdir(tmp_path) if f.endswith(".tmp")] and len(session_pids(p.pid)) >= 3):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else ""
            time.sleep(0.1)
        time.sleep(0.5)
        t0 = time.monotonic()
        # Ctrl-C on a terminal reaches every process of the foreground group; `kill` reaches only the main one
        os.killpg(p.pid, sig) if to_group else os.kill(p.pid, sig)
        stdout, stderr = p.communicate(timeout=30)
        assert time.monotonic() - t0 < 15
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines()[-1] == \
        f"resnext_dist.data.write: stopped by {sig.name}; nothing written to {out}"
    assert "Traceback" not in stderr
    assert os.listdir(tmp_path) == []
    assert wait_session_empty(p.pid) == []


# ----------------------------------------------------------------------------------------------
# One writer per output, an output checked before the work, no FIFO waited on (issue 25)


def test_a_second_writer_of_the_same_beton_exits_2_naming_the_first_which_finishes_undisturbed(tmp_path, capsys):
    from resnext_dist.exclusive import read_lease

    out = tmp_path / "o.beton"
    lock = tmp_path / ".o.beton.lock"
    first = writer_process("--source", "synthetic", "--num-images", 300, "--num-classes", 5, "--size", 16,
                           "--workers", 1, "--output", out)
    try:
        deadline = time.monotonic() + 120
        while read_lease(str(lock)).get("pid") != first.pid:  # the first writer holds the output
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        os.kill(first.pid, signal.SIGSTOP)  # and keeps holding it while the second one tries
        for force in ([], ["--force"]):
            t0 = time.monotonic()
            assert write_cli("--source", "digits", "--split", "val", "--output", out, *force) == 2
            err = capsys.readouterr().err.strip()
            assert time.monotonic() - t0 < 10  # at once, before any image is read
            assert err.startswith(f"error: {out}: being written by pid {first.pid} on host ") and "\n" not in err
            assert err.endswith("; wait for that writer to end or stop it, or choose another --output")
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert first.returncode == 0, stderr
    images, labels = read_beton(out)
    assert len(labels) == 300 and labels.max() == 4  # the first writer's dataset, not the digits
    assert (tmp_path / "o.classes.json").read_text().count("class_") == 5
    assert files_in(tmp_path) == ["o.beton", "o.classes.json"]  # the lock file went with its writer


@pytest.mark.parametrize("kind", ["fifo", "device-link"])
def test_a_fifo_named_like_an_image_in_the_folder_is_named_never_waited_on(tmp_path, capsys, kind):
    from tests.unit.test_files import deadline, not_regular

    make_image_folder(tmp_path / "t", classes=("a", "b"), per_class=2, size=(8, 8))
    path = not_regular(tmp_path / "t" / "b", kind)  # b/<kind>.jpg, listed by the class folder's walk
    with deadline(120):
        line = expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "t", "--output",
                                         tmp_path / "o.beton"], path, tmp_path)
    assert "not a regular file; expected an image file" in line
    with deadline(120):  # --skip-corrupt leaves it out like any unreadable image
        assert write_cli("--source", "imagefolder", "--input", tmp_path / "t", "--skip-corrupt", "--output",
                         tmp_path / "o.beton") == 0
    assert "skipped 1 unreadable image(s) of 5" in capsys.readouterr().err
    assert list(read_beton(tmp_path / "o.beton")[1]) == [0, 0, 1, 1]


def test_an_output_that_cannot_be_written_is_refused_before_any_image_is_read(tmp_path, capsys):
    from tests.mounts import small_tmpfs

    make_image_folder(tmp_path / "t", classes=("a",), per_class=2, ext="jpg")
    (tmp_path / "t" / "a" / "001.jpg").write_bytes(b"not a JPEG")  # what the work would stop at first
    with small_tmpfs(tmp_path / "ro", "64k") as ro:
        assert not os.system(f"mount -o remount,ro {ro}")
        line = expect_bad_input(capsys, ["--source", "imagefolder", "--input", tmp_path / "t", "--skip-corrupt",
                                         "--output", os.path.join(ro, "o.beton")], ro, ro)
        assert line == f"error: --output {ro}/o.beton: cannot be written: {ro} is not writable by this user"
    (tmp_path / "o.beton").mkdir()
    expect_bad_input(capsys, ["--source", "digits", "--output", tmp_path / "o.beton"], "a directory", tmp_path)

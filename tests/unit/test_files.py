"""files.py and exclusive.py: only regular files are opened, never waited on; outputs checked before the work; one
holder of a lock file at a time (issue 25 items 4, 6, 8)."""
import contextlib
import fcntl
import os
import signal
import socket

import pytest

from resnext_dist.errors import InputError
from resnext_dist.exclusive import ExclusiveLock, InUse, read_lease
from resnext_dist.files import NotRegularFile, check_output_file, open_regular, regular_file_problem
from tests.mounts import small_tmpfs


@contextlib.contextmanager
def deadline(seconds: int = 5):
    """Fail instead of hanging: a blocking open() of a FIFO is interrupted by SIGALRM and the handler raises."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def not_regular(tmp_path, kind):
    """A path that is not a regular file, of each kind a hostile folder can hold."""
    path = str(tmp_path / f"{kind}.jpg")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "fifo-link":
        os.mkfifo(str(tmp_path / "real-fifo"))
        os.symlink(str(tmp_path / "real-fifo"), path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(path)  # kept open by the test's garbage: the file stays a socket either way
        not_regular.sockets.append(sock)
    elif kind == "device-link":
        os.symlink("/dev/zero", path)  # read forever, never an end of file
    elif kind == "directory":
        os.mkdir(path)
    return path


not_regular.sockets = []
KINDS = ["fifo", "fifo-link", "socket", "device-link", "directory"]


@pytest.mark.parametrize("kind", KINDS)
def test_anything_but_a_regular_file_is_refused_at_once_naming_it(tmp_path, kind):
    path = not_regular(tmp_path, kind)
    with deadline(), pytest.raises(NotRegularFile) as e:
        open_regular(path, "an image file")
    assert str(e.value).startswith(f"{path}: ") and "expected an image file" in str(e.value)
    assert regular_file_problem(path).endswith("not a regular file") or "socket" in regular_file_problem(path)


def test_a_regular_file_and_a_link_to_one_open_and_read_blocking_as_usual(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 100_000)
    os.symlink(str(tmp_path / "a.bin"), str(tmp_path / "link.bin"))
    for name in ("a.bin", "link.bin"):
        with open_regular(str(tmp_path / name)) as f:
            assert not fcntl.fcntl(f.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK
            assert f.read() == b"x" * 100_000
        assert regular_file_problem(str(tmp_path / name)) == ""
    assert regular_file_problem(str(tmp_path / "none")) == "no such file"
    with pytest.raises(FileNotFoundError):
        open_regular(str(tmp_path / "none"))


def test_a_fifo_swapped_in_after_a_check_is_refused_not_waited_on(tmp_path):
    path = str(tmp_path / "w.pt")
    (tmp_path / "w.pt").write_bytes(b"weights")
    assert regular_file_problem(path) == ""  # the check a caller made earlier
    os.remove(path)
    os.mkfifo(path)  # ... and what the name points at when the file is opened
    with deadline(), pytest.raises(NotRegularFile, match="a FIFO, not a regular file"):
        open_regular(path, "weights")


def test_an_output_is_checked_writable_before_the_work(tmp_path):
    check_output_file(str(tmp_path / "new" / "deeper" / "out.json"), "--json")  # folders made when written
    (tmp_path / "old.json").write_text("{}")
    check_output_file(str(tmp_path / "old.json"), "--json")  # replaced
    os.symlink(str(tmp_path / "gone"), str(tmp_path / "dangling.json"))
    check_output_file(str(tmp_path / "dangling.json"), "--json")
    for kind in ("directory", "fifo"):
        path = not_regular(tmp_path, kind)
        with pytest.raises(InputError, match=f"^--json {path}: .*not a regular file$"):
            check_output_file(path, "--json")
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match="afile is not a directory$"):
        check_output_file(str(tmp_path / "afile" / "out.json"), "--json")


def test_an_output_on_a_read_only_filesystem_is_refused(tmp_path):
    ro = tmp_path / "ro"
    with small_tmpfs(ro, "64k"):
        assert not os.system(f"mount -o remount,ro {ro}")
        with pytest.raises(InputError, match=f"^--json {ro}/x/out.json: cannot be written: {ro} is not writable"):
            check_output_file(str(ro / "x" / "out.json"), "--json")


# ---- one holder at a time


def test_a_second_holder_is_refused_naming_the_first_and_a_removed_lock_leaves_no_file(tmp_path):
    path = str(tmp_path / "sub" / ".out.lock")
    first = ExclusiveLock(path, remove=True).acquire()
    assert read_lease(path)["pid"] == os.getpid()
    with pytest.raises(InUse, match=f"is held by pid {os.getpid()} on host {socket.gethostname()} since "):
        ExclusiveLock(path, remove=True).acquire()
    first.release()
    assert not os.path.exists(path)
    with ExclusiveLock(path, remove=True) as again:
        assert again.held
    assert not os.path.exists(path)


def test_a_lock_file_removed_while_a_taker_had_it_open_is_not_held_by_two(tmp_path, monkeypatch):
    """B opens the lock file, A releases (unlinks) it, B's flock then succeeds on the unlinked file: B must see that
    the file is no longer at the path and lock the new one, or a third taker would hold the path beside B."""
    path = str(tmp_path / ".out.lock")
    a = ExclusiveLock(path, remove=True).acquire()
    real_flock = fcntl.flock

    def a_releases_first(fd, op):
        monkeypatch.setattr(fcntl, "flock", real_flock)
        a.release()  # between B's open and B's flock
        return real_flock(fd, op)

    monkeypatch.setattr(fcntl, "flock", a_releases_first)
    b = ExclusiveLock(path, remove=True).acquire()
    assert os.fstat(b._fd).st_ino == os.stat(path).st_ino  # B holds the file that is at the path
    with pytest.raises(InUse, match=f"pid {os.getpid()}"):
        ExclusiveLock(path, remove=True).acquire()
    b.release()


def test_a_hostile_lease_is_named_in_plain_words_only(tmp_path):
    from resnext_dist.exclusive import holder
    assert holder({"pid": "1\n2", "host": "x" * 500, "slurm_job_id": True, "started": "soon"}) == "pid ? on host ?"
    assert holder({"pid": 12, "host": "n1", "slurm_job_id": "7"}) == "pid 12 on host n1 (Slurm job 7)"

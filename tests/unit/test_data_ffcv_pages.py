"""The FFCV loader with data.os_cache=false: the page-friendly order (data.order=auto) reads each page of the
.beton once per epoch, counted in the bytes the process reads (/proc/self/io), and FFCV's own page cache holds
about data.shuffle_window pages at once, where the exact random order makes it hold nearly the whole file. The
order is sharding.train_shard's with the file's pages, and resumes mid-epoch on the same sequence.

200 raw 256x256 images (192 KiB each) on 2 MiB pages: 10 per page, 20 pages, a 40 MB file.
"""
import pytest

from resnext_dist.data import build_loaders
from resnext_dist.data.ffcv import image_pages
from resnext_dist.data.sharding import train_shard
from resnext_dist.data.sources import SyntheticSource
from resnext_dist.dist import DistInfo
from tests.data_helpers import data_cfg, write

pytestmark = pytest.mark.slow  # FFCV compiles its center-crop pipeline (~5 s)
N, BATCH, WINDOW, SEED = 200, 10, 4, 3


@pytest.fixture(scope="module")
def beton(tmp_path_factory):
    path = tmp_path_factory.mktemp("pages") / "train.beton"
    write(SyntheticSource(N, N, size=256), path, write_mode="raw")  # label = index
    return str(path)


def build(beton, **fields):
    cfg = data_cfg(loader="ffcv", train=beton, val="", batch_size=BATCH, random_crop=False, os_cache=False,
                   shuffle_window=WINDOW, **fields)
    return build_loaders(cfg, DistInfo(), seed=SEED, num_classes=N, channels_last=True)[0]


def bytes_read() -> int:
    """Bytes this process read through read()/pread() (FFCV's own page cache reads pages with pread)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar"))


def read_epoch(train):
    """One epoch through FFCV's iterator: (labels in order, pages its cache held at once, pages read)."""
    before, it = bytes_read(), iter(train.loader)
    slots = it.memory_context.schedule.num_slots
    labels = [int(y) for _, y in it for y in y.reshape(-1)]
    return labels, slots, (bytes_read() - before) / train.loader.reader.page_size


def test_image_pages_are_the_pages_ffcv_reads_each_image_from(beton):
    train = build(beton)
    pages = image_pages(train.loader)
    expected = [min(train.loader.memory_manager.sample_to_pages[i]) for i in range(N)]
    assert pages.tolist() == expected and len(set(expected)) == 20


def test_page_order_reads_each_page_once_and_holds_about_a_window_of_pages(beton):
    train = build(beton)  # data.order=auto with data.os_cache=false: pages
    assert train.reading["order"] == "pages" and train.reading["window"] == WINDOW
    n_pages = len(set(image_pages(train.loader).tolist()))
    read_epoch(train)  # compiles the pipeline
    for epoch in (1, 2):
        train.loader.next_epoch = epoch
        labels, slots, pages_read = read_epoch(train)
        assert labels == train_shard(N, seed=SEED, epoch=epoch, rank=0, world_size=1, batch_size=BATCH,
                                     pages=image_pages(train.loader), window=WINDOW).tolist()
        assert n_pages <= pages_read < n_pages + 1  # each page once (and a few bytes of anything else)
        assert slots <= WINDOW + 4  # the window, and the pages of the batches FFCV prefetches
    plain = build(beton, order="random")
    assert plain.reading["order"] == "random"
    read_epoch(plain)
    labels, slots, pages_read = read_epoch(plain)
    assert slots >= n_pages - 2  # the exact random order: the cache holds nearly every page at once
    assert labels == train_shard(N, seed=SEED, epoch=1, rank=0, world_size=1, batch_size=BATCH).tolist()


def test_page_order_resumes_mid_epoch_on_the_same_sequence(beton):
    train = build(beton, order="pages")
    full = [y.tolist() for _, y in train.epoch(2, res=16)]
    assert [y.tolist() for _, y in train.epoch(2, res=16, start=5 * BATCH)] == full[5:]
    assert len(full) == N // BATCH
    assert sorted(y for batch in full for y in batch) == list(range(N))  # every image once

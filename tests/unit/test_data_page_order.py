"""The page-friendly training order (sharding.epoch_permutation with `pages`): an exact permutation per epoch, cut
into ranks like the plain one, a function of (seed, epoch), that reads each page about once through a buffer of
`window` pages where the plain order reads a page for nearly every image."""
from collections import OrderedDict

import numpy as np
import pytest

from resnext_dist.data.sharding import epoch_permutation, train_shard

# 40 pages of uneven fill (as a writer's last pages are), shuffled page numbers with a gap: 617 images
FILL = np.random.default_rng(0).integers(5, 26, 40)
PAGES = np.repeat(np.random.default_rng(1).permutation(np.arange(3, 43)), FILL)
N = len(PAGES)


@pytest.mark.parametrize("window", [1, 3, 8, 39, 40, 1000, 0])
def test_every_image_exactly_once_per_epoch(window):
    for epoch in range(3):
        order = epoch_permutation(N, seed=4, epoch=epoch, pages=PAGES, window=window)
        assert order.dtype == np.int64 and np.array_equal(np.sort(order), np.arange(N))


def test_a_function_of_seed_epoch_and_the_file_only():
    order = lambda **kw: epoch_permutation(N, **{**dict(seed=4, epoch=2, pages=PAGES, window=6), **kw})
    assert np.array_equal(order(), order())
    assert not np.array_equal(order(), order(epoch=3))
    assert not np.array_equal(order(), order(seed=5))
    assert not np.array_equal(order(), order(window=7))
    assert not np.array_equal(order(), epoch_permutation(N, seed=4, epoch=2))  # not the plain order's draw


@pytest.mark.parametrize("batch", [4, 7])
def test_rank_blocks_are_disjoint_and_their_union_is_the_same_on_1_2_3_ranks(batch):
    """Rank r's k-th batch is micro-batch k*world + r of the one global order: on any world size the
    micro-batches are the same images in the same order; the ranks never share an image."""
    single = train_shard(N, seed=4, epoch=1, rank=0, world_size=1, batch_size=batch, pages=PAGES, window=5)
    single = single.reshape(-1, batch)
    for world in (1, 2, 3):
        shards = [train_shard(N, seed=4, epoch=1, rank=r, world_size=world, batch_size=batch, pages=PAGES,
                              window=5).reshape(-1, batch) for r in range(world)]
        steps = N // (world * batch)
        assert all(len(s) == steps for s in shards)
        flat = np.concatenate([s.reshape(-1) for s in shards])
        assert len(np.unique(flat)) == len(flat)  # disjoint
        union = np.stack(shards, axis=1).reshape(-1, batch)  # micro-batch k*world + r is rank r's k-th
        assert np.array_equal(union, single[:len(union)])


def test_resuming_mid_epoch_continues_the_same_sequence():
    """The order is recomputed from (seed, epoch) on resume; skipping the batches done gives the rest, bit for bit."""
    full = train_shard(N, seed=4, epoch=3, rank=1, world_size=2, batch_size=5, pages=PAGES, window=5)
    again = train_shard(N, seed=4, epoch=3, rank=1, world_size=2, batch_size=5, pages=PAGES, window=5)
    assert np.array_equal(again[7 * 5:], full[7 * 5:])


def page_reads(order, pages, capacity):
    """Page reads of a reader that keeps the `capacity` most recently used pages (a bounded page cache)."""
    cache, reads = OrderedDict(), 0
    for page in pages[order]:
        if page in cache:
            cache.move_to_end(page)
            continue
        reads += 1
        cache[page] = True
        if len(cache) > capacity:
            cache.popitem(last=False)
    return reads


@pytest.mark.parametrize("window", [1, 4, 8])
def test_each_page_is_read_about_once_with_a_buffer_of_window_pages(window):
    """Counted with a least-recently-used page cache of twice the window (LRU may drop a page still in use that
    has been idle a while, so it needs some room): each page is read once per epoch; the plain random order,
    through the same cache, reads a page for most images."""
    n_pages = len(np.unique(PAGES))
    for epoch in range(3):
        order = epoch_permutation(N, seed=4, epoch=epoch, pages=PAGES, window=window)
        assert page_reads(order, PAGES, 2 * window) == n_pages
    random_reads = page_reads(epoch_permutation(N, seed=4, epoch=0), PAGES, 16)
    assert random_reads > 0.5 * N  # ~ (1 - 16/40) of the images each cost a page read


def test_pages_in_use_at_once_stay_within_the_window():
    """At any point of the epoch only `window` pages have been started and not finished (what FFCV's own cache
    must hold at once): for every prefix of the order, pages started minus pages finished <= window."""
    window = 6
    order = epoch_permutation(N, seed=9, epoch=0, pages=PAGES, window=window)
    seen = PAGES[order]
    last = {page: i for i, page in enumerate(seen)}
    first = {}
    for i, page in enumerate(seen):
        first.setdefault(page, i)
    open_at = [sum(1 for p in first if first[p] <= i <= last[p]) for i in range(N)]
    assert max(open_at) <= window + 1  # +1: the position where one page ends and the next begins
    plain = epoch_permutation(N, seed=9, epoch=0)
    seen = PAGES[plain]
    first, last = {}, {page: i for i, page in enumerate(seen)}
    for i, page in enumerate(seen):
        first.setdefault(page, i)
    assert max(sum(1 for p in first if first[p] <= i <= last[p]) for i in range(0, N, 25)) > 30


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        epoch_permutation(N, seed=0, epoch=0, pages=PAGES[:-1], window=2)
    with pytest.raises(ValueError):
        epoch_permutation(N, seed=0, epoch=0, pages=PAGES, window=-1)


def test_the_page_order_needs_a_loader_with_pages():
    from resnext_dist.config import load_config
    from resnext_dist.errors import InputError

    with pytest.raises(InputError, match=r"^data.order=pages needs data.loader=ffcv \(got data.loader=torchvision\)"):
        load_config(None, ["data.loader=torchvision", "data.train=/d", "model.num_classes=10", "data.order=pages"])
    with pytest.raises(InputError, match=r"^data.order='pages-ish': must be one of auto, random, pages$"):
        load_config(None, ["data.order=pages-ish"])
    # auto with os_cache=false is the plain order where there are no pages (torchvision reads files)
    assert load_config(None, ["data.loader=torchvision", "data.train=/d", "model.num_classes=10", "data.os_cache=false"]).data.order == "auto"


def test_the_statistical_difference_the_readme_states():
    """ImageNet's train set written in class order (1,281,167 images, 1,000 classes, ~30 images per 8 MiB page at
    FFCV's recommended storage): a batch of 256 spans ~108 classes with the default 128-page window, ~226 with the
    exact shuffle (the README's figures)."""
    n = 1_281_167
    labels, pages = np.arange(n) * 1000 // n, np.arange(n) // 30

    def classes_per_batch(order):
        return np.mean([len(set(batch)) for batch in labels[order][:256 * 200].reshape(200, 256)])

    assert 100 < classes_per_batch(epoch_permutation(n, seed=0, epoch=0, pages=pages, window=128)) < 116
    assert 218 < classes_per_batch(epoch_permutation(n, seed=0, epoch=0)) < 234

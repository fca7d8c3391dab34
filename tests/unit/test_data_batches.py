"""How a step's global batch is shared out (data/batches.py): any world size, equal micro-steps on every rank,
micro-batches within data.batch_size and never empty, the old layout wherever the split is even."""
import pytest

from resnext_dist.data.batches import BatchSplit, split_for


def all_splits():
    for g in range(1, 41):
        for w in range(1, 9):
            for b in (1, 2, 3, 5, 8, 64):
                split = BatchSplit(g, w, b)
                if split.problem() is None:
                    yield split


def test_every_split_gives_every_image_once_in_equal_micro_steps_within_the_memory_limit():
    count = 0
    for split in all_splits():
        count += 1
        ranks = range(split.world_size)
        positions = sorted(p for r in ranks for p in split.positions(r))
        assert positions == list(range(split.global_batch)), split  # each image of the step, exactly once
        for r in ranks:
            sizes = split.micro_sizes(r)
            assert len(sizes) == split.accum_steps, split  # the same micro-steps on every rank: DDP meets
            assert all(1 <= n <= split.max_micro for n in sizes), split  # never empty, never over memory
            assert sum(sizes) == len(split.positions(r))
        assert max(split.group_sizes) - min(split.group_sizes) <= 1
        # the fewest micro-steps: one fewer would need a micro-batch over data.batch_size
        assert (split.accum_steps - 1) * split.world_size * split.max_micro < split.global_batch
    assert count > 1500


def test_an_even_split_is_the_fixed_world_size_layout():
    """Global 32 = 2 ranks x 2 micro-steps x 8: micro-step a of rank r holds images [8(2a+r), 8(2a+r)+8) of the
    step, as before; and 1 process x 4 micro-batches of 8 reads the same groups (BatchNorm's batches)."""
    split = BatchSplit(32, 2, 8)
    assert split.accum_steps == 2 and split.micro_sizes(0) == split.micro_sizes(1) == [8, 8]
    assert split.positions(1) == list(range(8, 16)) + list(range(24, 32))
    assert BatchSplit(32, 1, 8).group_sizes == split.group_sizes == [8] * 4
    assert split_for(4, 8) == BatchSplit(32, 4, 8)  # 0: data.batch_size x world size


def test_an_uneven_split_differs_by_one_image_at_most():
    split = BatchSplit(1024, 3, 128)  # ImageNet's 1024 on 3 GPUs of at most 128 each
    assert split.accum_steps == 3 and split.group_sizes == [114] * 7 + [113] * 2
    assert [sum(split.micro_sizes(r)) for r in range(3)] == [342, 341, 341]
    assert split.sizes_text() == "113-114"


@pytest.mark.parametrize("g, w, b, message", [
    (16, 32, 8, "optim.global_batch_size=16 is less than one image per process on 32 processes: run it on at "
                "most 16 processes"),
    (5, 3, 1, "data.batch_size=1 cannot share a global batch of 5 among 3 processes"),
])
def test_a_split_that_cannot_run_names_the_key(g, w, b, message):
    assert BatchSplit(g, w, b).problem().startswith(message)
    assert BatchSplit(g, w, b).problem().count("\n") == 0

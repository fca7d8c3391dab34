"""How one optimizer step's global batch is shared out among the processes: which micro-batches each takes, and
how many micro-steps (gradient accumulation) a step has.

Only the global batch (optim.global_batch_size) defines a run; the split follows from the world size and
data.batch_size, the largest micro-batch a process may take (its memory), so a run keeps its global batch, and
with it its learning-rate schedule, on any number of processes:

    split = BatchSplit(global_batch=1024, world_size=3, max_micro=128)
    split.accum_steps        # 3 micro-steps per optimizer step on every rank
    split.micro_sizes(rank)  # [114, 114, 113] ...: rank r's micro-batches, in order

A step's images (a consecutive slice of the epoch's global order, sharding.py) are cut into K = world_size x
accum_steps groups whose sizes differ by at most one (the larger first), each at most data.batch_size; group j is
micro-step j // world_size of rank j % world_size. When the global batch is world_size x accum_steps x
data.batch_size every group holds data.batch_size images and this is the layout of a fixed world size: 2 ranks x
8 images read the same groups as 1 process x 2 micro-batches of 8. The groups are BatchNorm's batches, so where
they change with the world size (an uneven split), BatchNorm's statistics change with them; the update itself
does not (run/step.py weighs each micro-batch by its images).

Every rank runs the same number of micro-steps, so DDP's gradient all-reduce (on the last micro-step) and the
ranks' agreement meet on every rank; a group is never empty (the checks below). Plain Python, no numpy or
torch: the config checks use it, and --help stays instant.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate
from typing import List, Optional


@dataclass(frozen=True)
class BatchSplit:
    global_batch: int  # images per optimizer step over all processes
    world_size: int
    max_micro: int  # data.batch_size

    @property
    def accum_steps(self) -> int:
        """Micro-steps per optimizer step, the same on every rank: the fewest that keep every group within
        max_micro."""
        return -(-self.global_batch // (self.world_size * self.max_micro))

    @property
    def group_sizes(self) -> List[int]:
        """The sizes of the step's K = world_size x accum_steps groups, in the order they are read."""
        k = self.world_size * self.accum_steps
        small, larger = divmod(self.global_batch, k)
        return [small + 1] * larger + [small] * (k - larger)

    def micro_sizes(self, rank: int) -> List[int]:
        """Rank `rank`'s micro-batch sizes within one step, in order."""
        return self.group_sizes[rank::self.world_size]

    def positions(self, rank: int) -> List[int]:
        """Where rank `rank`'s images sit within the step's global_batch images, in the order it reads them."""
        sizes = self.group_sizes
        starts = [0, *accumulate(sizes)]
        return [p for j in range(rank, len(sizes), self.world_size) for p in range(starts[j], starts[j] + sizes[j])]

    def sizes_text(self) -> str:
        """The micro-batch size(s) in words: "8" or "5-6"."""
        sizes = self.group_sizes
        return str(sizes[0]) if sizes[0] == sizes[-1] else f"{sizes[-1]}-{sizes[0]}"

    def words(self) -> str:
        """The global batch in words that name the keys setting it (for a too-small dataset's message)."""
        return (f"one global batch of {self.global_batch} images (optim.global_batch_size; 0 = data.batch_size="
                f"{self.max_micro} x {self.world_size} ranks)")

    def problem(self) -> Optional[str]:
        """Why this split cannot run (one line naming the key to change), or None."""
        g, w, b = self.global_batch, self.world_size, self.max_micro
        if g < w:
            return (f"optim.global_batch_size={g} is less than one image per process on {w} processes: run it on "
                    f"at most {g} processes")
        if b == 1 and g % w:
            # accum_steps = ceil(g / w) micro-steps of one image: some rank would have an empty one
            return (f"data.batch_size=1 cannot share a global batch of {g} among {w} processes in equal numbers of "
                    f"micro-steps; set data.batch_size=2 or more")
        return None


def split_for(world_size: int, batch_size: int, global_batch: int = 0) -> BatchSplit:
    """The split of `global_batch` (0: world_size x batch_size, one micro-step) with micro-batches of at most
    `batch_size`."""
    return BatchSplit(global_batch or world_size * batch_size, world_size, batch_size)

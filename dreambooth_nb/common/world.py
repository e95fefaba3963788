"""Data-parallel workers: which one this process is, joining the others, and waiting for them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel workers (rank 0 writes files)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


_STATE: dict = {}


def init_data_parallel() -> World:
    """Join the workers (mindspore.communication.init) and switch MindSpore to data-parallel mode."""
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    if not _STATE.get("world"):
        init()
        world = World(get_rank(), get_group_size())
        ms.reset_auto_parallel_context()
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=world.size)
        _STATE["world"] = world
    return _STATE["world"]


def current_world(distributed: bool) -> World:
    """The data-parallel world when `distributed` (initialising it once), else a single worker."""
    return init_data_parallel() if distributed else World()


def barrier(world: World) -> None:
    """Wait until every worker gets here (no-op for a single worker).

    MindSpore's Barrier op has no CPU kernel; an all-reduce of one number, compiled once, waits just the same.
    """
    if world.size == 1:
        return
    import mindspore as ms
    from mindspore import nn, ops

    if "sync" not in _STATE:
        class Sync(nn.Cell):
            def __init__(self):
                super().__init__()
                self.reduce = ops.AllReduce()

            def construct(self, x):
                return self.reduce(x)

        _STATE["sync"] = Sync()
    _STATE["sync"](ms.Tensor([1.0], ms.float32)).asnumpy()

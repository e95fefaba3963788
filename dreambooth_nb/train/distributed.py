"""Data-parallel training: one process per device started by msrun, gradients averaged across them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

# Set by the launchers in every worker: msrun (MS_ROLE), a rank table (RANK_TABLE_FILE), mpirun (OMPI_*).
LAUNCHER_ENV = ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE")
DIGEST_DIR = "rank-digests"


@dataclass(frozen=True)
class World:
    """This process's rank among `size` data-parallel workers (rank 0 writes files)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched_by_launcher() -> bool:
    """True inside a worker that msrun (or a rank table / mpirun) started."""
    return any(os.environ.get(name) for name in LAUNCHER_ENV)


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


def grad_reducer(params, world: World):
    """nn.DistributedGradReducer averaging gradients over the workers; None for a single worker."""
    if world.size == 1:
        return None
    from mindspore import nn

    return nn.DistributedGradReducer(params, mean=True, degree=world.size)


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


# ------------------------------------------------------------------------ launching with msrun
def free_port() -> int:
    """A TCP port nobody listens on right now (for msrun's scheduler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(train_args: list[str], workers: int = 8, master_port: int = 8118,
                  log_dir: str = "msrun_log") -> list[str]:
    """The msrun command line that trains with `train_args` (TrainConfig.to_args()) on `workers` devices of this machine."""
    train_args = [a for a in train_args if a != "--distributed"]
    return ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={master_port}",
            f"--log_dir={log_dir}", "--join=True", "python", "-m", "dreambooth_nb.train", "--distributed", *train_args]


def msrun_shell(config, workers: int = 8, master_port: int = 8118, log_dir: str = "msrun_log") -> str:
    """The msrun command for `config` as one line to paste into a shell."""
    import shlex

    return shlex.join(msrun_command(config.to_args(), workers, master_port, log_dir))


def read_digests(output_dir: str | os.PathLike) -> dict[int, dict]:
    """The weight digest each rank wrote at the end of training, by rank."""
    folder = Path(output_dir) / DIGEST_DIR
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))}


@dataclass(repr=False)
class MsrunResult:
    """What a data-parallel run left: the exit code, each rank's weight digest and the log folder."""

    returncode: int
    digests: dict
    log_dir: Path
    seconds: float

    @property
    def same_weights(self) -> bool:
        """True when every rank ended with bit-identical trained weights."""
        return len(self.digests) > 1 and len({d["sha256"] for d in self.digests.values()}) == 1

    def __str__(self) -> str:
        rows = [f"rank {r}: sha256 {d['sha256'][:16]}…  sum {d['sum']:.6f}" for r, d in sorted(self.digests.items())]
        state = "identical" if self.same_weights else "DIFFERENT"
        return "\n".join([f"msrun exit code {self.returncode} after {self.seconds:.0f} s; weights {state} on all ranks", *rows])

    def __repr__(self) -> str:
        return str(self)

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of each worker's log (where to look when a run fails)."""
        out = []
        for log in sorted(self.log_dir.glob("worker_*.log")):
            out += [f"== {log.name}", *log.read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(out)


def run_msrun(config, workers: int = 2, log_dir: str | os.PathLike | None = None,
              timeout: float = 900, extra_env: dict | None = None) -> MsrunResult:
    """Train `config` data-parallel on `workers` CPU processes of this machine with msrun; wait and read the digests.

    Each worker runs `python -m dreambooth_nb.train --distributed <config flags>` on its shard of
    every batch; msrun talks to them over loopback. Returns each rank's digest of its trained weights.
    """
    import shutil
    import time

    output_dir = Path(config.output_dir)
    shutil.rmtree(output_dir / DIGEST_DIR, ignore_errors=True)  # digests of an earlier run must not count
    log_dir = Path(log_dir or output_dir.parent / f"{output_dir.name}-msrun-logs")
    command = msrun_command(config.to_args(), workers, free_port(), str(log_dir))
    bin_dir = str(Path(sys.executable).parent)  # msrun starts `python`: the one of this environment
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **(extra_env or {})}
    env.pop("MS_ROLE", None)
    command[0] = str(Path(bin_dir) / "msrun")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                          check=False)
    result = MsrunResult(done.returncode, read_digests(output_dir), log_dir, time.perf_counter() - start)
    if done.returncode != 0:
        raise RuntimeError(f"msrun exited with code {done.returncode}; worker logs in {log_dir}:\n{result.log_tail()}")
    return result

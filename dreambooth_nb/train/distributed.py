"""Data-parallel training: one process per device started by msrun, gradients averaged across them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ..common.tables import Table
from ..common.world import World

DIGEST_DIR = "rank-digests"


def grad_reducer(params, world: World):
    """nn.DistributedGradReducer averaging gradients over the workers; None for a single worker."""
    if world.size == 1:
        return None
    from mindspore import nn

    return nn.DistributedGradReducer(params, mean=True, degree=world.size)


# ------------------------------------------------------------------------ launching with msrun
def free_port() -> int:
    """A TCP port nobody listens on right now (for msrun's scheduler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def msrun_command(train_args: list[str], workers: int = 8, master_port: int = 8118,
                  log_dir: str = "msrun_log", module: str = "dreambooth_nb.train") -> list[str]:
    """The msrun command line that trains with `train_args` (config.to_args()) on `workers` devices of this machine,
    with the command line of `module` (dreambooth_nb.train, or dreambooth_nb.train_lora for LoRA)."""
    train_args = [a for a in train_args if a != "--distributed"]
    return ["msrun", f"--worker_num={workers}", f"--local_worker_num={workers}", f"--master_port={master_port}",
            f"--log_dir={log_dir}", "--join=True", "python", "-m", module, "--distributed", *train_args]


def msrun_shell(config, workers: int = 8, master_port: int = 8118, log_dir: str = "msrun_log") -> str:
    """The msrun command for `config` as one line to paste into a shell."""
    import shlex

    return shlex.join(msrun_command(config.to_args(), workers, master_port, log_dir, config.COMMAND))


def saved_digest(output_dir: str | os.PathLike, digests: dict[int, dict]) -> dict | None:
    """The digest of the networks rank 0 trained, as saved in output_dir and loaded back; None where it saved no
    such folders (a LoRA run saves adapters only)."""
    from ..models import load_components
    from .checkpoint import weight_digest

    names = digests.get(0, {}).get("networks") or []
    if not names or not all((Path(output_dir) / name / "config.json").is_file() for name in names):
        return None
    components = load_components(str(output_dir))
    return weight_digest({name: getattr(components, name) for name in names})


def read_digests(output_dir: str | os.PathLike) -> dict[int, dict]:
    """The weight digest each rank wrote at the end of training, by rank."""
    folder = Path(output_dir) / DIGEST_DIR
    return {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in sorted(folder.glob("rank-*.json"))}


@dataclass(repr=False)
class MsrunResult(Table):
    """What a data-parallel run left: the exit code, each rank's weight digest and the log folder."""

    returncode: int
    digests: dict
    log_dir: Path
    seconds: float
    saved: dict | None = None  # the digest of the networks rank 0 saved, read back from the output folder

    @property
    def same_weights(self) -> bool:
        """True when every rank of the world (0 .. n-1, each knowing it is one of n) ended with bit-identical
        trained weights."""
        ranks = sorted(self.digests)
        return (len(ranks) > 1 and ranks == list(range(len(ranks)))
                and all(d["world"] == len(ranks) for d in self.digests.values())
                and len({d["sha256"] for d in self.digests.values()}) == 1)

    @property
    def saved_as_trained(self) -> bool:
        """True when the model rank 0 saved, loaded back, has exactly the weights the ranks trained."""
        return self.saved is not None and 0 in self.digests and self.saved["sha256"] == self.digests[0]["sha256"]

    header = ("rank", "sha256 of the trained weights", "sum of the weights")

    @property
    def caption(self) -> str:
        state = "identical" if self.same_weights else "DIFFERENT"
        saved = {True: "the saved model has them", False: "the saved model DIFFERS", None: "no model saved"}[
            None if self.saved is None else self.saved_as_trained]
        return f"msrun exit code {self.returncode} after {self.seconds:.0f} s; weights {state} on all ranks; {saved}"

    def rows(self) -> list[tuple]:
        return [(r, f"{d['sha256'][:16]}…", f"{d['sum']:.6f}") for r, d in sorted(self.digests.items())]

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
    command = msrun_command(config.to_args(), workers, free_port(), str(log_dir), config.COMMAND)
    bin_dir = str(Path(sys.executable).parent)  # msrun starts `python`: the one of this environment
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), **(extra_env or {})}
    if config.hub_token:  # never on a command line: the workers read it from the environment
        env["HF_TOKEN"] = config.hub_token
    env.pop("MS_ROLE", None)
    command[0] = str(Path(bin_dir) / "msrun")
    from ..common.commands import ends_with_this_process
    from ..common.waits import said_wait

    start = time.perf_counter()
    with said_wait(f"msrun: {workers} workers start, compile the step and train",
                   f"msrun: {workers} workers, {config.resolution} px, {config.max_train_steps} steps",
                   first_time="the first time here: a minute or two on a CPU"):
        # if this process dies, msrun is sent Ctrl-C: the one signal on which it stops its workers and scheduler
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout,
                              check=False, preexec_fn=ends_with_this_process(signal.SIGINT))
    result = MsrunResult(done.returncode, read_digests(output_dir), log_dir, time.perf_counter() - start)
    if done.returncode != 0:
        raise RuntimeError(f"msrun exited with code {done.returncode}; worker logs in {log_dir}:\n{result.log_tail()}")
    result.saved = saved_digest(output_dir, result.digests)
    return result

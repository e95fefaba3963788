"""Wall time and peak kernel memory of each notebook under nbval (test profile), and of the whole suite.

    python bench/notebooks.py [--full] [notebooks/NN_name.ipynb ...]

--full runs the full profile (DREAMBOOTH_NB_FAST unset): there only the memory target applies.

Each notebook runs in its own `pytest --nbval-lax` process; a sampler thread records the largest resident
memory of one process in that tree (the Jupyter kernel, or a training process it started) and of the whole tree at
once (kernel and the processes it started, side by side: what a Binder session's 2 GB must hold). Targets: <= 180 s
and <= 2048 MB for the whole tree, each notebook; <= 900 s for the suite. The notebooks run with one malloc arena,
as Binder's start sets it (MALLOC_ARENA_MAX=1, where the 2 GB applies; a MALLOC_ARENA_MAX of your own wins).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
TARGET_S, TARGET_MB, SUITE_S = 180, 2048, 900
BINDER_ARENAS = "1"  # MALLOC_ARENA_MAX as binder/start sets it (a variable of your own wins)


def tree_peak_rss(proc: subprocess.Popen, peak: list[float], stop: threading.Event) -> None:
    """Poll the process tree every 0.2 s: the largest single-process RSS (MB) in peak[0], the largest sum over the
    processes below pytest (the kernel and what it started) in peak[1]."""
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try:
            sizes = [p.memory_info().rss / 2**20 for p in root.children(recursive=True)]
            peak[0] = max(peak[0], root.memory_info().rss / 2**20, *sizes)
            peak[1] = max(peak[1], sum(sizes))
        except psutil.Error:
            pass
        time.sleep(0.2)


def run_notebook(path: Path, full: bool = False) -> tuple[float, float, float, int]:
    """(seconds, peak MB of one process, peak MB of the kernel's tree, pytest exit code) for one notebook."""
    env = {"MALLOC_ARENA_MAX": BINDER_ARENAS, **os.environ, "DREAMBOOTH_NB_FAST": "0" if full else "1", "GLOG_v": "3"}
    cmd = [sys.executable, "-m", "pytest", str(path), "--nbval-lax", "--nbval-current-env", "-q", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peak, stop = [0.0, 0.0], threading.Event()
    sampler = threading.Thread(target=tree_peak_rss, args=(proc, peak, stop), daemon=True)
    sampler.start()
    code = proc.wait()
    stop.set()
    sampler.join()
    return time.perf_counter() - start, peak[0], peak[1], code


def main(args: list[str]) -> int:
    full = "--full" in args
    notebooks = [Path(p) for p in args if p != "--full"] or sorted((ROOT / "notebooks").glob("*.ipynb"))
    total, failures = 0.0, 0
    print(f"{'full' if full else 'test'} profile")
    print(f"{'notebook':<36} {'time':>8} {'one process':>12} {'kernel tree':>12}  verdict")
    for nb in notebooks:
        seconds, mb, tree_mb, code = run_notebook(nb, full)
        total += seconds
        ok = code == 0 and (full or seconds <= TARGET_S) and tree_mb <= TARGET_MB
        failures += not ok
        verdict = "ok" if ok else ("FAILED" if code else "over target")
        print(f"{nb.name:<36} {seconds:7.0f}s {mb:9.0f} MB {tree_mb:9.0f} MB  {verdict}", flush=True)
    if not full:
        print(f"{'whole suite (notebooks)':<36} {total:7.0f}s {'':>10}  {'ok' if total <= SUITE_S else 'over target'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

"""The memory levers of a DreamBooth step, measured on this machine: gradient checkpointing and fp16 against fp32.

    python bench/memory_levers.py                       # batch 4 with prior, at 32 px (the toy's size), 64 and 128 px
    python bench/memory_levers.py --resolutions 32 --repeats 1

Each lever runs the engine's step in its own fresh process (bench/ms_worker.py), `--repeats` times in turn, so
the peak resident memory is that lever's alone. The table gives medians: seconds a step after warm-up, the first
step (compiling), peak RSS, and each against fp32 at the same resolution. A process holding more than
--max_rss_mb (default 16 GB; the v6 model's fp32 step at 128 px peaks near 10 GB) is stopped and its row says so. The mean loss over the steps shows that
a lever trains the same thing (same seed, same batches: fp16 differs by rounding only).
bf16 is not in the table: MindSpore 2.7.1's CPU kernels refuse it (Conv2D and MatMul take float32 only), so the
engine trains in fp32 on CPU and warns. Results go to outputs/bench/memory_levers.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from run import HERE, OUT, prepare

LEVERS = {"fp32": [], "gradient checkpointing": ["--gradient_checkpointing"], "fp16 (Ascend recipe)": ["--fp16"]}


def process_tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB (Linux /proc)."""
    import subprocess

    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)], capture_output=True, text=True)
    return sum(int(x) for x in out.stdout.split()) / 1024


def run_lever(args: list[str], max_rss_mb: float) -> dict:
    """One worker in a fresh process, stopped when it holds more than `max_rss_mb` (the machine has to keep
    running); returns its result, or {"stopped_above_mb": max_rss_mb}."""
    import os
    import subprocess
    import tempfile
    import time

    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "GLOG_v": "3", "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, str(HERE / "ms_worker.py"), *args], stdout=out, stderr=err, env=env,
                                cwd=HERE)
        while proc.poll() is None:
            if process_tree_rss_mb(proc.pid) > max_rss_mb:
                proc.kill()
                proc.wait()
                return {"stopped_above_mb": max_rss_mb}
            time.sleep(1.0)
        out.seek(0), err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            raise RuntimeError(f"ms_worker.py {' '.join(args)} failed:\n{err.read()[-2000:]}")
        return json.loads(lines[-1])


def measure(model: str, photos: str, resolution: int, batch: int, repeats: int, max_rss_mb: float) -> list[dict]:
    """One row per lever at this resolution, its medians over `repeats` fresh processes."""
    rows = []
    for name, flags in LEVERS.items():
        args = ["train", "--batch", str(batch), "--prior", "--resolution", str(resolution), *flags,
                "--model", model, "--photos", photos]
        results = [run_lever(args, max_rss_mb) for _ in range(repeats)]
        row = {"lever": name, "resolution": resolution, "batch": batch, "repeats": repeats}
        if any("stopped_above_mb" in r for r in results):
            row["stopped_above_mb"] = max_rss_mb
        else:
            row.update({k: statistics.median(r[k] for r in results) for k in ("steady_s", "first_s", "peak_rss_mb", "mean_loss")})
        rows.append(row)
        print(format_row(row), flush=True)
    base = rows[0]
    for row in rows:
        if "steady_s" in row and "steady_s" in base:
            row["time_vs_fp32"] = round(row["steady_s"] / base["steady_s"], 2)
            row["memory_vs_fp32"] = round(row["peak_rss_mb"] / base["peak_rss_mb"], 2)
    return rows


def format_row(r: dict) -> str:
    """One markdown row: the lever's measurements against fp32, or where it was stopped."""
    where = f"| {r['resolution']} px, {r['batch']} + prior | {r['lever']} |"
    if "stopped_above_mb" in r:
        return where + f" - | - | - | stopped above {r['stopped_above_mb']:.0f} MB | - | - |"
    vs = (f"{r['time_vs_fp32']:.2f}x", f"{r['memory_vs_fp32']:.2f}x") if "time_vs_fp32" in r else ("", "")
    return (where + f" {r['steady_s']:.3f} | {vs[0]} | {r['first_s']:.0f} s | {r['peak_rss_mb']:.0f} MB | {vs[1]} | "
            f"{r['mean_loss']:.4f} |")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| resolution, batch | lever | s / step | vs fp32 | first step | peak RSS | vs fp32 | mean loss |",
             "|---|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [format_row(r) for r in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: dreambooth_nb's default)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max_rss_mb", type=float, default=16000, help="stop a lever's process above this")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    model, _, photos = prepare(args.model)
    rows = []
    for resolution in args.resolutions:
        rows += measure(model, photos, resolution, args.batch, args.repeats, args.max_rss_mb)
        (OUT / "memory_levers.json").write_text(json.dumps(rows, indent=1))  # what was measured, kept as it goes
        (OUT / "memory_levers.md").write_text(markdown_table(rows))
    print("\n" + markdown_table(rows))


if __name__ == "__main__":
    main()

"""Run the benchmarks side by side and print ratios: dreambooth_nb (MindSpore) vs diffusers (PyTorch) on CPU.

    python bench/run.py --torch-python .venv-bench/bin/python            # train step, LoRA step, sampling
    python bench/run.py --only lora --batches 1 2                        # LoRA step vs diffusers + PEFT
    python bench/run.py --only sample --repeats 3

Every case runs each framework in its own fresh process, alternating which goes first, `--repeats` times,
so both see the same machine state; the table reports medians and the MindSpore/PyTorch ratio (<= 1.0 means
dreambooth_nb is no slower). Results also go to outputs/bench/results.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = ROOT / "outputs" / "bench"


def prepare(model: str) -> tuple[str, str, str]:
    """(MindSpore model folder, PyTorch-loadable copy, photos folder)."""
    sys.path.insert(0, str(HERE))
    from common import torch_loadable_copy

    import dreambooth_nb as db
    from dreambooth_nb.common.assets import resolve_model

    db.setup(device="CPU", show=False)
    ms_model = resolve_model(model)
    pt_model = torch_loadable_copy(Path(ms_model), OUT / "model-pt")
    return ms_model, str(pt_model), str(db.subject_photos_dir())


def run_worker(python: str, worker: str, args: list[str]) -> dict:
    # passive OpenMP waiting: with spinning threads PyTorch's steps jump to seconds whenever another process is busy
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "GLOG_v": "3", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([python, str(HERE / worker), *args], capture_output=True, text=True, env=env, cwd=HERE)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{worker} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def cases(only: str, batches: list[int]) -> list[tuple[str, list[str]]]:
    out = []
    for task, title in (("train", "train step"), ("lora", "LoRA step (rank 4)")):
        if only not in ("all", task):
            continue
        for batch in batches:
            for prior in (False, True):
                name = f"{title}, batch {batch}" + (" + prior" if prior else "")
                out.append((name, [task, "--batch", str(batch)] + (["--prior"] if prior else [])))
    if only in ("all", "sample"):
        out.append(("sampling, 25 PNDM steps, 1 image", ["sample", "--steps", "25"]))
    return out


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--model", default=None, help="model both sides load (default: dreambooth_nb's default)")
    parser.add_argument("--only", choices=["all", "train", "lora", "sample"], default="all")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.torch_python = os.path.abspath(args.torch_python)  # workers run with cwd=bench/
    OUT.mkdir(parents=True, exist_ok=True)
    ms_model, pt_model, photos = prepare(args.model)
    rows = []
    for name, case in cases(args.only, args.batches):
        ms_runs, pt_runs = [], []
        for r in range(args.repeats):
            order = [("ms", sys.executable, "ms_worker.py", ms_model), ("pt", args.torch_python, "torch_worker.py", pt_model)]
            for side, python, worker, model in (order if r % 2 == 0 else order[::-1]):
                result = run_worker(python, worker, case + ["--model", model, "--photos", photos])
                (ms_runs if side == "ms" else pt_runs).append(result)
        row = {
            "case": name,
            "ms_steady_s": median(ms_runs, "steady_s"), "pt_steady_s": median(pt_runs, "steady_s"),
            "ms_first_s": median(ms_runs, "first_s"), "pt_first_s": median(pt_runs, "first_s"),
            "ms_rss_mb": median(ms_runs, "peak_rss_mb"), "pt_rss_mb": median(pt_runs, "peak_rss_mb"),
        }
        row["ratio"] = round(row["ms_steady_s"] / row["pt_steady_s"], 2)
        for side, runs in (("ms", ms_runs), ("pt", pt_runs)):  # the same count on both sides: the same step is timed
            if "trained_params" in runs[0]:
                row[f"{side}_trained_params"] = runs[0]["trained_params"]
        rows.append(row)
        print(format_row(row), flush=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1))
    (OUT / "results.md").write_text(markdown_table(rows))
    print("\n" + markdown_table(rows))


def format_row(row: dict) -> str:
    return (f"{row['case']:<40} mindspore {row['ms_steady_s']:.3f} s  pytorch {row['pt_steady_s']:.3f} s  "
            f"ratio {row['ratio']:.2f}  (first: {row['ms_first_s']:.1f} s vs {row['pt_first_s']:.1f} s)")


def markdown_table(rows: list[dict]) -> str:
    lines = ["| case | dreambooth_nb (MindSpore) | diffusers (PyTorch) | ratio | first call MS / PT | peak RSS MS / PT |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['ms_steady_s']:.3f} s | {r['pt_steady_s']:.3f} s | {r['ratio']:.2f} | "
                     f"{r['ms_first_s']:.1f} s / {r['pt_first_s']:.1f} s | {r['ms_rss_mb']:.0f} / {r['pt_rss_mb']:.0f} MB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

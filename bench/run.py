"""Run the benchmarks side by side and print ratios: dreambooth_nb (MindSpore) vs diffusers (PyTorch) on CPU.

    python bench/run.py --torch-python .venv-bench/bin/python            # train step, LoRA step, sampling
    python bench/run.py --only lora --batches 1 2                        # LoRA step vs diffusers + PEFT
    python bench/run.py --only sample --repeats 3
    python bench/run.py --only big                                       # train step with a 142 M-parameter UNet

Each row is held against its target (TARGETS); the run exits with status 1 when one is missed.

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


def save_table(stem: str, measured, markdown_rows: list[str]) -> None:
    """Write what a benchmark measured (OUT/<stem>.json) and its table (OUT/<stem>.md), and print the table."""
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(measured, indent=1))
    (OUT / f"{stem}.md").write_text("\n".join(markdown_rows) + "\n")
    print("\n".join(markdown_rows))


# (what the case name starts with, target ratio MindSpore/PyTorch of steady seconds); a toy train step's peak RSS is
# held to at most RSS_TARGET x PyTorch's (a run with a warm compile cache: the step's own memory, without the
# compiler's; the compiling run's ratio is printed beside it), and a training step's first step with a warm compile
# cache (the case's graph compiled by an earlier repeat) to FIRST_TARGET_S seconds
TARGETS = (("train step, 142 M", 1.5), ("train step", 1.3), ("LoRA step", 1.3), ("sampling", 1.1))
LEVER_OFF = "mindone's pipeline loop (lever off, no target)"  # the row beside sampling that shows what the compiled loop gains
RSS_TARGET = 2.0
FIRST_TARGET_S = 3.0


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


def run_worker(python: str, worker: str, args: list[str], threads: int | None = None) -> dict:
    # passive OpenMP waiting: with spinning threads PyTorch's steps jump to seconds whenever another process is busy
    env = {"OMP_WAIT_POLICY": "PASSIVE", **os.environ, "GLOG_v": "3", "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run([python, str(HERE / worker), *args], capture_output=True, text=True, env=env, cwd=HERE)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{worker} {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1])


def fastest_torch_threads(torch_python: str, model: str, photos: str, sample: bool = True) -> int:
    """PyTorch's faster thread count on this machine for this model (one or every core), from its train step and
    (sample) its sampling: on some virtual machines two threads make small ops several times slower, and the
    comparison is with PyTorch at its best."""
    probes = [["train", "--batch", "1"]] + ([["sample", "--steps", "25"]] if sample else [])
    seconds = {n: sum(run_worker(torch_python, "torch_worker.py", case + ["--model", model, "--photos", photos], n)["steady_s"]
                      for case in probes) for n in sorted({1, os.cpu_count() or 1})}
    best = min(seconds, key=seconds.get)
    print(f"PyTorch threads for {Path(model).name}: " + ", ".join(f"{n}: {t:.3f} s" for n, t in seconds.items())
          + f" ({' + '.join(p[0] for p in probes)}); running with {best}", flush=True)
    return best


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
        out.append((f"sampling, 25 PNDM steps, 1 image, {LEVER_OFF}", ["sample", "--steps", "25", "--pipeline_loop"]))
    if only in ("all", "big"):
        out.append(("train step, 142 M UNet, 64 px, batch 1 + prior", ["train", "--batch", "1", "--prior", "--big"]))
    return out


def verdicts(row: dict) -> list[tuple[str, bool]]:
    """(what was held against which target, met) for one row (none for a row that shows a lever switched off)."""
    if LEVER_OFF in row["case"]:
        return []
    target = next(t for prefix, t in TARGETS if row["case"].startswith(prefix))
    out = [(f"ratio {row['ratio']:.2f} <= {target}", row["ratio"] <= target)]
    if row.get("ms_first_warm_s") is not None:
        warm = row["ms_first_warm_s"]
        out.append((f"first step, warm cache {warm:.1f} s <= {FIRST_TARGET_S:g} s", warm <= FIRST_TARGET_S))
    if row["case"].startswith("train step, batch"):  # the step's memory: a warm run's (no compiler working memory)
        warm = row.get("ms_rss_warm_mb")
        rss = (warm or row["ms_rss_mb"]) / row["pt_rss_mb"]
        cold = f", compiling {row['ms_rss_mb'] / row['pt_rss_mb']:.2f}x" if warm else ""
        out.append((f"peak RSS {rss:.2f}x <= {RSS_TARGET:g}x{cold}", rss <= RSS_TARGET))
    return out


def median(results: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--torch-python", default=str(ROOT / ".venv-bench" / "bin" / "python"))
    parser.add_argument("--model", default=None, help="model both sides load (default: dreambooth_nb's default)")
    parser.add_argument("--only", choices=["all", "train", "lora", "sample", "big"], default="all")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    args.torch_python = os.path.abspath(args.torch_python)  # workers run with cwd=bench/
    OUT.mkdir(parents=True, exist_ok=True)
    fresh_graph_cache()
    ms_model, pt_model, photos = prepare(args.model)
    threads = fastest_torch_threads(args.torch_python, pt_model, photos)
    rows = []
    for name, case in cases(args.only, args.batches):
        models, case_threads = (ms_model, pt_model), threads
        if "--big" in case:
            models = prepare_big(ms_model)
            case_threads = fastest_torch_threads(args.torch_python, models[1], photos, sample=False)
            case = [c for c in case if c != "--big"]
        ms_runs, pt_runs = [], []
        for r in range(args.repeats):
            order = [("ms", sys.executable, "ms_worker.py", models[0]), ("pt", args.torch_python, "torch_worker.py", models[1])]
            for side, python, worker, model in (order if r % 2 == 0 else order[::-1]):
                result = run_worker(python, worker, case + ["--model", model, "--photos", photos],
                                    case_threads if side == "pt" else None)
                (ms_runs if side == "ms" else pt_runs).append(result)
        warm = [r for r in ms_runs if r.get("first_cached")]
        cold = [r for r in ms_runs if not r.get("first_cached")]
        row = {
            "case": name,
            "ms_steady_s": median(ms_runs, "steady_s"), "pt_steady_s": median(pt_runs, "steady_s"),
            "ms_first_s": median(cold, "first_s") if cold else None, "pt_first_s": median(pt_runs, "first_s"),
            "ms_first_warm_s": median(warm, "first_s") if warm else None,
            # peak RSS of the compiling runs (the warm ones stay lower: no compiler's working memory)
            "ms_rss_mb": median(cold or ms_runs, "peak_rss_mb"), "pt_rss_mb": median(pt_runs, "peak_rss_mb"),
            "ms_rss_warm_mb": median(warm, "peak_rss_mb") if warm else None,
        }
        row["ratio"] = round(row["ms_steady_s"] / row["pt_steady_s"], 2)
        row["pt_threads"] = case_threads
        for side, runs in (("ms", ms_runs), ("pt", pt_runs)):  # the same count on both sides: the same step is timed
            if "trained_params" in runs[0]:
                row[f"{side}_trained_params"] = runs[0]["trained_params"]
        row["targets"] = verdicts(row)
        rows.append(row)
        print(format_row(row), flush=True)
    (OUT / "results.json").write_text(json.dumps(rows, indent=1))
    (OUT / "results.md").write_text(markdown_table(rows))
    print("\n" + markdown_table(rows))
    missed = [f"{r['case']}: {what}" for r in rows for what, met in r["targets"] if not met]
    print(f"{len(missed)} target(s) missed" + "".join(f"\n  {m}" for m in missed) if missed else "every target met")
    sys.exit(1 if missed else 0)


def fresh_graph_cache() -> None:
    """An empty compile cache of the bench's own for the workers: each training case's first repeat compiles (cold),
    the later ones load its graph (warm)."""
    import shutil

    from dreambooth_nb.common.graph_cache import GRAPH_CACHE_ENV

    graphs = OUT / "graphs"
    shutil.rmtree(graphs, ignore_errors=True)
    os.environ[GRAPH_CACHE_ENV] = str(graphs)


def first_calls(row: dict) -> str:
    """'18.9 s (warm 1.5 s) / 0.1 s': MindSpore's first call, compiling and loaded from the cache, and PyTorch's."""
    cold = "-" if row["ms_first_s"] is None else f"{row['ms_first_s']:.1f} s"
    warm = f" (warm {row['ms_first_warm_s']:.1f} s)" if row.get("ms_first_warm_s") is not None else ""
    return f"{cold}{warm} / {row['pt_first_s']:.1f} s"


def peak_rss(row: dict) -> str:
    """'1436 (warm 735) / 430 MB': MindSpore's peak RSS compiling and with a warm cache, and PyTorch's."""
    warm = f" (warm {row['ms_rss_warm_mb']:.0f})" if row.get("ms_rss_warm_mb") is not None else ""
    return f"{row['ms_rss_mb']:.0f}{warm} / {row['pt_rss_mb']:.0f} MB"


def prepare_big(ms_model: str) -> tuple[str, str]:
    """(MindSpore folder, PyTorch-loadable copy) of the 142 M-parameter model (bench/big_model.py)."""
    from big_model import big_model
    from common import torch_loadable_copy

    folder, _ = big_model(ms_model)
    return str(folder), str(torch_loadable_copy(folder, OUT / "model-142m-pt"))


def format_row(row: dict) -> str:
    return (f"{row['case']:<40} mindspore {row['ms_steady_s']:.3f} s  pytorch {row['pt_steady_s']:.3f} s  "
            f"ratio {row['ratio']:.2f}  (first, MS / PT: {first_calls(row)})  "
            + ", ".join(f"{what}: {'met' if met else 'NOT MET'}" for what, met in row["targets"]))


def markdown_table(rows: list[dict]) -> str:
    lines = ["| case | dreambooth_nb (MindSpore) | diffusers (PyTorch, threads) | ratio | first call MS / PT | peak RSS MS / PT "
             "| targets |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        said = "; ".join(f"{what}: {'met' if met else '**not met**'}" for what, met in r["targets"])
        lines.append(f"| {r['case']} | {r['ms_steady_s']:.3f} s | {r['pt_steady_s']:.3f} s ({r['pt_threads']}) | {r['ratio']:.2f} | "
                     f"{first_calls(r)} | {peak_rss(r)} "
                     f"| {said} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

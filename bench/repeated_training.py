"""What one process keeps after each training run: chapter 08's LoRA runs (ranks 1, 16, 2, 8) one after another in one
process, as its rank sweep trains in the notebook's kernel.

    python bench/repeated_training.py [--runs 4] [--steps 20]

Two settings, each in its own fresh process (the test profile's run; one malloc arena, as on Binder; the compile
cache off): the engine as it
is, and every finished run's compiled graph deleted through MindSpore's own call (`del_net_res`, what `Cell.__del__`
does) before the next. After each run: resident memory, seconds, and how many UNets are still alive (each run loads
its own). The first run's growth is MindSpore's compile of the train step (about 1.2 GB on the toy model whatever the
method or compile level); each later run's growth is what a process keeps of a finished run. Results go to
outputs/bench/repeated_training.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from run import ROOT, save_table

SETTINGS = {"as the engine leaves it": "0", "each finished graph deleted (del_net_res)": "1"}

WORKER = """
import gc, json, os, sys, tempfile, time
import psutil
import dreambooth_nb as db
from mindspore.common.api import _cell_graph_executor
from dreambooth_nb.lora import train_lora
from dreambooth_nb.train import engine

def delete_graphs():
    trainer = engine._LAST_TRAINER.get("trainer")
    for cell in (trainer.step_cell, trainer.apply_cell) if trainer else ():
        for _, sub in (cell.cells_and_names() if cell is not None else ()):
            if sub.compile_cache:
                _cell_graph_executor.del_net_res(sub, sub.compile_cache)
                sub.compile_cache.clear()
    engine._LAST_TRAINER.clear()

db.setup(device="CPU", show=False)
process, rows = psutil.Process(), []
rows.append({"run": "setup", "rss_mb": process.memory_info().rss / 2**20})
config = db.lora_config(max_train_steps=int(sys.argv[2]))
for rank in (1, 16, 2, 8)[: int(sys.argv[3])]:
    start = time.perf_counter()
    train_lora(config.replace(lora_rank=rank, output_dir=tempfile.mkdtemp()), progress=False)
    if sys.argv[1] == "1":
        delete_graphs()
    gc.collect()
    rows.append({"run": f"rank {rank}", "seconds": time.perf_counter() - start,
                 "rss_mb": process.memory_info().rss / 2**20,
                 "unets_alive": sum(type(o).__name__ == "UNet2DConditionModel" for o in gc.get_objects())})
print(json.dumps(rows))
"""


def measure(setting: str, steps: int, runs: int) -> list[dict]:
    env = {**os.environ, "MALLOC_ARENA_MAX": "1", "DREAMBOOTH_NB_GRAPH_CACHE": "0", "DREAMBOOTH_NB_FAST": "1", "GLOG_v": "3"}
    done = subprocess.run([sys.executable, "-c", WORKER, setting, str(steps), str(runs)], env=env, capture_output=True,
                          text=True, cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=4, choices=range(1, 5))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    results = {}
    for name, setting in SETTINGS.items():
        results[name] = measure(setting, args.steps, args.runs)
        print(name, results[name], flush=True)
    rows = ["| setting | " + " | ".join(r["run"] for r in next(iter(results.values()))) + " |",
            "|---|" + "---|" * (args.runs + 1)]
    for name, runs in results.items():
        cells = [f"{runs[0]['rss_mb']:.0f} MB"]
        cells += [f"{r['rss_mb']:.0f} MB (+{r['rss_mb'] - p['rss_mb']:.0f}), {r['unets_alive']} UNets, {r['seconds']:.0f} s"
                  for p, r in zip(runs, runs[1:])]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    save_table("repeated_training", results, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory and speed of the toy model with glibc's default malloc arenas against one (Binder's MALLOC_ARENA_MAX=1).

    python bench/malloc_arenas.py [--repeats 2]

Each setting runs in its own fresh process, in turn: `--steps` training steps of chapter 07's playground run
(batch 4, compiled anew: the compile cache off), then 4 pictures sampled once to compile and 3 times timed, once with
glibc's default (an arena per thread, up to 8 a core) and once with MALLOC_ARENA_MAX=1 (binder/start's setting).
Results go to outputs/bench/malloc_arenas.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from run import ROOT, save_table
SETTINGS = {"glibc's default": None, "MALLOC_ARENA_MAX=1 (Binder)": "1"}

WORKER = """
import json, statistics, sys, tempfile, time
import dreambooth_nb as db
from dreambooth_nb.common import runtime
from dreambooth_nb.common.config import playground_config

db.setup(device="CPU", show=False)
config = playground_config(output_dir=tempfile.mkdtemp()).replace(max_train_steps=int(sys.argv[1]))
steps = db.train_dreambooth(config, progress=False).step_seconds[5:]
pipe = db.load_pipeline("toy-world")
db.generate(pipe, ["a photo of a star"] * 4, [0, 1, 2, 3])
start = time.perf_counter()
for _ in range(3):
    db.generate(pipe, ["a photo of a star"] * 4, [0, 1, 2, 3])
print(json.dumps({"step_s": statistics.median(steps), "sampling_s": (time.perf_counter() - start) / 3,
                  "peak_mb": runtime.peak_rss_mb()}))
"""


def measure(setting: str | None, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(DREAMBOOTH_NB_GRAPH_CACHE="0", GLOG_v="3", **({"MALLOC_ARENA_MAX": setting} if setting else {}))
    done = subprocess.run([sys.executable, "-c", WORKER, str(steps)], env=env, capture_output=True, text=True,
                          cwd=ROOT, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    runs = {name: [] for name in SETTINGS}
    for _ in range(args.repeats):
        for name, setting in SETTINGS.items():
            runs[name].append(measure(setting, args.steps))
            print(name, runs[name][-1], flush=True)
    rows = ["| malloc | train step (s) | 4 pictures, 25 steps (s) | peak RSS (MB) |", "|---|---|---|---|"]
    for name, results in runs.items():
        median = {k: statistics.median(r[k] for r in results) for k in results[0]}
        rows.append(f"| {name} | {median['step_s']:.3f} | {median['sampling_s']:.2f} | {median['peak_mb']:.0f} |")
    save_table("malloc_arenas", runs, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

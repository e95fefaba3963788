"""Kill training at random moments (SIGKILL, some of them while a checkpoint is being written), resume each time,
and check that every checkpoint left is whole (or absent) and that the run ends bit-identical to one never killed.

    python bench/faults.py [--kills 12] [--steps 24] [--seed 0]

Prints one line per kill and a summary; exits 1 when a checkpoint was found damaged or the final weights differ.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("outputs/bench/faults")
FLAGS = ["--pretrained_model_name_or_path=tiny-random", "--resolution=32", "--train_batch_size=1",
         "--learning_rate=1e-3", "--lr_warmup_steps=0", "--checkpointing_steps=2", "--checkpoints_total_limit=3",
         "--report_to=tensorboard", "--seed=0", "--device=CPU"]


def train(output_dir: Path, steps: int, resume: bool) -> subprocess.Popen:
    """Start `python -m dreambooth_nb.train` on the tiny model in its own process."""
    command = [sys.executable, "-m", "dreambooth_nb.train", f"--output_dir={output_dir}", f"--max_train_steps={steps}",
               *FLAGS, *(["--resume_from_checkpoint=latest"] if resume else [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def weights_sha(output_dir: Path) -> str:
    """sha256 of the saved UNet's weights."""
    from dreambooth_nb.common.files import file_hash

    return file_hash(output_dir / "unet" / "diffusion_pytorch_model.safetensors")


def checkpoint_problems(output_dir: Path) -> list[str]:
    """Every checkpoint-N folder must match its manifest; no folder may be named checkpoint-N while half written."""
    from dreambooth_nb.train import checkpoint as ckpt

    problems = []
    for path in sorted(output_dir.glob("checkpoint-*")):
        problem = ckpt.damage(path)
        if problem is not None:
            problems.append(f"{path.name}: {problem}")
    return problems


def kill_at_random(process: subprocess.Popen, output_dir: Path, rng: random.Random, during_write: bool,
                   run_seconds: float) -> str:
    """SIGKILL the process: while a checkpoint is being written (watching for its temporary folder), or after a
    random share of a whole run's time (startup, compile, steps, saving). Returns when it was."""
    start = time.monotonic()
    if during_write:
        while process.poll() is None and time.monotonic() - start < 240:
            if list(output_dir.glob(".checkpoint-*.tmp-*")):
                time.sleep(rng.uniform(0.0, 0.05))
                process.send_signal(signal.SIGKILL)
                return f"during a checkpoint write, {time.monotonic() - start:.1f} s in"
            time.sleep(0.005)
        return "finished before a checkpoint write was caught"
    delay = rng.uniform(0.1, 1.0) * run_seconds
    while process.poll() is None and time.monotonic() - start < delay:
        time.sleep(0.05)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        return f"at a random moment, {delay:.1f} s in"
    return "finished before the kill"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    shutil.rmtree(OUT, ignore_errors=True)
    reference, faulted = OUT / "uninterrupted", OUT / "killed"
    started = time.monotonic()
    done = train(reference, args.steps, resume=False)
    if done.wait() != 0:
        print(done.stderr.read(), file=sys.stderr)
        return 1
    run_seconds = time.monotonic() - started
    kills, damaged = [], []
    for i in range(args.kills):
        process = train(faulted, args.steps, resume=i > 0)
        when = kill_at_random(process, faulted, rng, i % 2 == 1, run_seconds)
        process.wait()
        problems = checkpoint_problems(faulted)
        damaged += problems
        kills.append(when)
        print(f"kill {i + 1}: {when}; checkpoints {[p.name for p in sorted(faulted.glob('checkpoint-*'))]}; "
              f"{'damaged: ' + '; '.join(problems) if problems else 'all whole'}", flush=True)
    final = train(faulted, args.steps, resume=True)
    if final.wait() != 0:
        print(final.stderr.read(), file=sys.stderr)
        return 1
    same = weights_sha(reference) == weights_sha(faulted)
    summary = {"kills": len(kills), "during_checkpoint_writes": sum("during a checkpoint" in k for k in kills),
               "damaged_checkpoints": len(damaged), "final_weights_identical": same}
    print(json.dumps(summary))
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1))
    return 0 if same and not damaged else 1


if __name__ == "__main__":
    raise SystemExit(main())

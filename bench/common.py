"""Shared by the benchmark workers: the model folder both frameworks load, and small timing helpers."""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

INSTANCE_PROMPT = "a photo of sks star"  # the default subject on the default model (toy-world)
CLASS_PROMPT = "a photo of a star"
STEADY_STEPS = 10
WARMUP_STEPS = 2
LORA_RANK = 4  # the reference's --lora_rank; alpha = rank, Gaussian init, on the UNet's attention projections
LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


def native_resolution(model: str) -> int:
    """The image size the model folder was built for: UNet sample size x the VAE's downsampling factor.

    (dreambooth_nb.models.native_resolution does the same; this side also runs in the PyTorch venv, without it.)
    """
    unet = json.loads((Path(model) / "unet" / "config.json").read_text())
    vae = json.loads((Path(model) / "vae" / "config.json").read_text())
    return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_loadable_copy(src: Path, dst: Path) -> Path:
    """Copy a diffusers folder saved by mindone, re-tagging its safetensors as format=pt for PyTorch diffusers.

    mindone 0.3.0 writes metadata format=np, which diffusers/transformers on PyTorch refuse, and names
    embedding weights `embedding_table` where PyTorch says `weight`; the tensors themselves are the same.
    """
    from safetensors.numpy import load_file, save_file

    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)
    for path in dst.rglob("*.safetensors"):
        tensors = {rename_for_pytorch(k): v for k, v in load_file(path).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    return dst


def rename_for_pytorch(key: str) -> str:
    """MindSpore's nn.Embedding calls its weight `embedding_table`."""
    return key[: -len("embedding_table")] + "weight" if key.endswith(".embedding_table") else key


def report(result: dict) -> None:
    """Print the worker's result as one JSON line (the orchestrator reads the last line)."""
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    print(json.dumps(result))
    sys.stdout.flush()


def summarise(step_seconds: list[float]) -> dict:
    """First step (includes compiling) and the median of the steady steps after warm-up."""
    return {
        "first_s": round(step_seconds[0], 3),
        "steady_s": round(statistics.median(step_seconds[WARMUP_STEPS:]), 4),
    }


def time_calls(call, repeats: int = 3) -> dict:
    """Seconds of a first call (compiles, where anything does) and the median of `repeats` more; call(i) gets the index."""
    seconds = []
    for i in range(1 + repeats):
        start = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - start)
    return {"first_s": round(seconds[0], 3), "steady_s": round(float(statistics.median(seconds[1:])), 4)}


def worker_args(argv=None) -> argparse.Namespace:
    """The flags both workers take: which task (train: full fine-tuning step; lora: the same step training rank-4
    adapters only; sample), which model and photos, the batch, prior preservation, sampling steps; and the memory
    levers bench/memory_levers.py compares (the resolution, gradient checkpointing, fp16)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["train", "lora", "sample"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--photos")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prior", action="store_true")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: the model's own size)")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="MindSpore side only")
    parser.add_argument("--fp16", action="store_true", help="MindSpore side only: the engine's Ascend fp16 recipe")
    parser.add_argument("--pipeline_loop", action="store_true", help="MindSpore side only: sample with mindone's "
                        "pipeline loop instead of generate()'s compiled one")
    return parser.parse_args(argv)

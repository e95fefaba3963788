"""Chapter 05: sampling images from a (fine-tuned) pipeline with a compiled UNet and fixed seeds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .runtime import import_quietly

SCHEDULERS = ("DPMSolverMultistepScheduler", "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler")


def with_scheduler(pipe, name: str = "DPMSolverMultistepScheduler"):
    """Swap the pipeline's sampler for another diffusers scheduler built from the same config."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    diffusers = import_quietly("mindone.diffusers")
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    return pipe


def pipeline_from_components(components, scheduler: str = "PNDMScheduler"):
    """A StableDiffusionPipeline sharing the given networks (no copy): for sampling during or after training."""
    diffusers = import_quietly("mindone.diffusers")
    base = getattr(diffusers, scheduler).from_config(components.noise_scheduler.config)
    return diffusers.StableDiffusionPipeline(
        unet=components.unet, vae=components.vae, text_encoder=components.text_encoder,
        tokenizer=components.tokenizer, scheduler=base, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def load_pipeline(model: str | os.PathLike | None = None, scheduler: str = "DPMSolverMultistepScheduler"):
    """A StableDiffusionPipeline from a hub id, a folder (e.g. a training output_dir) or an embedded name."""
    from .models import resolve_model

    diffusers = import_quietly("mindone.diffusers")
    source = resolve_model(model)
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(source)
    pipe.set_progress_bar_config(disable=True)
    return with_scheduler(pipe, scheduler)


def default_size(pipe) -> int:
    """The image size the pipeline was trained for (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def generate(pipe, prompts: str | Sequence[str], seeds: Sequence[int] | int = 0, num_inference_steps: int = 25,
             guidance_scale: float = 7.5, negative_prompt: str | None = None, size: int | None = None,
             batch_size: int = 4) -> list:
    """PIL images, one per (prompt, seed) pair; the same seed and prompt always give the same image."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    size = size or default_size(pipe)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [np.random.default_rng(s) for s in seeds[start:start + batch_size]]
        out = pipe(chunk, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   negative_prompt=[negative_prompt] * len(chunk) if negative_prompt else None,
                   height=size, width=size, generator=generators, output_type="pil")
        images += list(out[0])
    return images


def save_images(images: Sequence, folder: str | os.PathLike, prefix: str = "image") -> list[Path]:
    """Write images as numbered PNGs (atomically) and return their paths."""
    from .viz import save_atomic

    return [save_atomic(im, Path(folder) / f"{prefix}-{i:03d}.png") for i, im in enumerate(images)]

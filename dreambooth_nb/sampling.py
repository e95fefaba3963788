"""Chapter 02 (sampling): a pipeline around the networks, the sampler, guided generation with fixed seeds, saving.

The pipeline shares the networks it is given (no copy), so the same call samples from a model being
trained, a fine-tuned one, or the base model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import defaults
from .common.assets import guidance_for
from .common.cards import shareable_settings
from .common.files import replace_dir, save_atomic
from .common.runtime import import_quietly

SCHEDULERS = ("DPMSolverMultistepScheduler", "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler")


def with_scheduler(pipe, name: str = defaults.SAMPLER):
    """Swap the pipeline's sampler for another diffusers scheduler built from the same config."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    diffusers = import_quietly("mindone.diffusers")
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    return pipe


def pipeline_from_components(components, scheduler: str | None = None, skip_text_encoder: bool = False):
    """A StableDiffusionPipeline sharing the given networks (no copy); its sampler is `scheduler`, else the
    model's own (the class its scheduler_config names), built from the model's noise schedule."""
    diffusers = import_quietly("mindone.diffusers")
    name = scheduler or getattr(components, "scheduler_class", None) or "PNDMScheduler"
    pipe = diffusers.StableDiffusionPipeline(
        unet=components.unet, vae=components.vae, text_encoder=None if skip_text_encoder else components.text_encoder,
        tokenizer=components.tokenizer, scheduler=getattr(diffusers, name).from_config(components.noise_scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.guidance_default = guidance_for(components.source)
    return pipe


def sampling_pipeline(components, scheduler: str = defaults.SAMPLER):
    """A pipeline of these networks with the course's sampler (DPM-Solver++), progress bar off."""
    return with_scheduler(pipeline_from_components(components), scheduler)


def default_size(pipe) -> int:
    """The image size the pipeline was trained for (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def default_guidance(pipe) -> float:
    """The guidance scale to sample this pipeline with: the toy world's for toy-world models, else the reference's."""
    return float(getattr(pipe, "guidance_default", defaults.REFERENCE_GUIDANCE))


def generate(pipe, prompts: str | Sequence[str], seeds: Sequence[int] | int = defaults.SEED,
             num_inference_steps: int | None = None, guidance_scale: float | None = None,
             negative_prompt: str | None = None, size: int | None = None,
             batch_size: int = defaults.SAMPLE_BATCH) -> list:
    """PIL images, one per (prompt, seed) pair; the same seed and prompt always give the same image.

    num_inference_steps: 25 (10 under the test profile) when None. guidance_scale: the model's default
    (4 for the toy world, 7.5 for hub models) when None. Every call to the pipeline holds exactly
    batch_size pictures (a short batch is padded, the extras dropped): the sampling loop compiles once for
    a pipeline, and a picture does not depend on how many others were drawn with it (another batch shape
    is another graph, with last-bit differences). Use batch_size=1 for single pictures from a large model.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    size = size or default_size(pipe)
    steps = num_inference_steps or defaults.inference_steps()
    guidance = default_guidance(pipe) if guidance_scale is None else guidance_scale
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        pad = batch_size - len(chunk)
        generators = [np.random.default_rng(s) for s in chunk_seeds + chunk_seeds[:1] * pad]
        out = pipe(chunk + chunk[:1] * pad, num_inference_steps=steps, guidance_scale=guidance,
                   negative_prompt=[negative_prompt] * batch_size if negative_prompt else None,
                   height=size, width=size, generator=generators, output_type="pil")
        images += list(out[0])[:len(chunk)]
    return images


def save_images(images: Sequence, folder: str | os.PathLike, prefix: str = "image") -> list[Path]:
    """Write images as numbered PNGs (atomically) and return their paths."""
    return [save_atomic(im, Path(folder) / f"{prefix}-{i:03d}.png") for i, im in enumerate(images)]


def save_pipeline(components, output_dir: str | os.PathLike, settings=None, skip_text_encoder: bool = False) -> Path:
    """Save the networks as a pipeline in diffusers layout (safetensors) into output_dir, each part atomically.

    Loadable by StableDiffusionPipeline.from_pretrained(output_dir); model_index.json is moved in last.
    The sampler saved is the model's own. `settings` (a TrainConfig) goes to train_config.json beside it.
    With skip_text_encoder the text encoder is left out (infer.load_pipeline takes it from the base model).
    """
    output_dir = Path(output_dir)
    pipe = pipeline_from_components(components, skip_text_encoder=skip_text_encoder)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".pipeline.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        pipe.save_pretrained(str(tmp))
        if settings is not None:
            (tmp / "train_config.json").write_text(json.dumps(shareable_settings(settings), indent=1), encoding="utf-8")
        for part in sorted(tmp.iterdir(), key=lambda p: p.name == "model_index.json"):
            if part.is_dir():
                replace_dir(part, output_dir / part.name)
            else:
                os.replace(part, output_dir / part.name)
        if skip_text_encoder:
            shutil.rmtree(output_dir / "text_encoder", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return output_dir


# ------------------------------------------------------------------ guided sampling, step by step
def guide(eps_uncond, eps_cond, scale: float):
    """Classifier-free guidance: start from the prediction without the prompt and go `scale` times as far as the
    prompt pulls. scale 1 is the prompt's prediction alone; 0 ignores the prompt; above 1 exaggerates it."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def guided_noise(pipe, latents, t, embeddings, scale: float):
    """The noise the model sees in the latents at step t: predicted without and with the prompt (one batch of
    both, unconditional first), then guided."""
    from mindspore import ops

    both = pipe.scheduler.scale_model_input(ops.cat([latents] * 2), t)
    eps = pipe.unet(both, t, encoder_hidden_states=embeddings, return_dict=False)[0]
    eps_uncond, eps_cond = eps.chunk(2)
    return guide(eps_uncond, eps_cond, scale)


def denoising_step(pipe, latents, t, embeddings, scale: float):
    """One step of guided sampling as the pipeline runs it: the guided noise, then the scheduler moves the
    latents from step t to the next."""
    return pipe.scheduler.step(guided_noise(pipe, latents, t, embeddings, scale), t, latents, return_dict=False)[0]


def predicted_clean(pipe, latents, t, eps):
    """The clean latents a noise prediction implies at step t: (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t (the forward process undone)."""
    a = float(pipe.scheduler.alphas_cumprod[int(t)])
    return (latents - (1 - a) ** 0.5 * eps) / a ** 0.5


def sample_by_hand(pipe, prompt: str, seed: int = defaults.SEED, num_inference_steps: int | None = None,
                   guidance_scale: float | None = None, keep_every: int = 0):
    """The pipeline's sampling loop written out: start from seeded noise, repeat the guided step, decode.

    Returns (picture, [(step, predicted clean picture), ...]) where the list holds, every `keep_every` steps,
    what the latents would decode to if the remaining noise were removed at once (empty when keep_every is 0).
    """
    from mindspore import ops

    size = default_size(pipe)
    scale = default_guidance(pipe) if guidance_scale is None else guidance_scale
    positive, negative = pipe.encode_prompt(prompt, 1, True)
    embeddings = ops.cat([negative, positive])
    pipe.scheduler.set_timesteps(num_inference_steps or defaults.inference_steps())
    latents = pipe.prepare_latents(1, pipe.unet.config.in_channels, size, size, positive.dtype,
                                   [np.random.default_rng(seed)])
    kept = []
    for i, t in enumerate(pipe.scheduler.timesteps):
        eps = guided_noise(pipe, latents, t, embeddings, scale)
        if keep_every and i % keep_every == 0:
            kept.append((i, decode(pipe, predicted_clean(pipe, latents, t, eps))))
        latents = pipe.scheduler.step(eps, t, latents, return_dict=False)[0]
    return decode(pipe, latents), kept


def decode(pipe, latents):
    """A PIL picture from latents, through the pipeline's VAE and its rounding to 8 bits (as its last step does)."""
    from PIL import Image

    pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0].asnumpy()[0]
    return Image.fromarray((np.clip(pixels / 2 + 0.5, 0, 1).transpose(1, 2, 0) * 255).round().astype(np.uint8))


def guidance_sweep(pipe, prompts: Sequence[str], scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0, 7.5, 12.0),
                   seed: int = defaults.SEED, num_inference_steps: int | None = None):
    """One row per prompt, one column per guidance scale, the same seed everywhere; returns the figure."""
    from .common.viz import show_images

    images, titles = [], []
    for prompt in prompts:
        for scale in scales:
            images += generate(pipe, [prompt], [seed], num_inference_steps=num_inference_steps, guidance_scale=scale,
                               batch_size=1)
            titles.append(f"scale {scale:g}" + ("\n(no prompt)" if scale == 0 else "") + (f"\n{prompt}" if scale == scales[0] else ""))
    return show_images(images, titles=titles, ncols=len(scales), scale=1.6)


def denoising_trajectory(pipe, prompt: str, seed: int = defaults.SEED, num_inference_steps: int | None = None,
                         columns: int = 6):
    """What the model believes the picture is, at a few steps of sampling (noise first, the result last); the figure."""
    from .common.viz import show_images

    steps = num_inference_steps or defaults.inference_steps()
    final, kept = sample_by_hand(pipe, prompt, seed, steps, keep_every=max(1, steps // (columns - 1)))
    images = [im for _, im in kept][:columns - 1] + [final]
    titles = [f"step {i} of {steps}\n(predicted)" for i, _ in kept][:columns - 1] + [f"step {steps}: the sample"]
    return show_images(images, titles=titles, ncols=len(images), scale=1.6, suptitle=prompt)

"""Chapter 02 (sampling): a pipeline around the networks, the sampler, guided generation with fixed seeds, saving.

The pipeline shares the networks it is given (no copy), so the same call samples from a model being
trained, a fine-tuned one, or the base model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .common import defaults
from .common.assets import guidance_for
from .common.cards import shareable_settings
from .common.files import replace_dir, save_atomic, share_modes
from .common.runtime import import_quietly
from .common.tables import Table
from .common.waits import said_wait
from .common.errors import InputError

# The guidance scale each pipeline samples with by default, kept here rather than on the pipeline (an object of
# mindone's): weak keys, so a pipeline that is dropped takes its entry with it.
_GUIDANCE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
# The call shapes each UNet has already compiled for (its first call with a new shape compiles a graph: said).
_COMPILED_SHAPES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

SCHEDULERS = ("DPMSolverMultistepScheduler", "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler")


def with_scheduler(pipe, name: str = defaults.SAMPLER):
    """Swap the pipeline's sampler for another diffusers scheduler built from the same config."""
    if name not in SCHEDULERS:
        raise InputError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
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
    remember_guidance(pipe, components.source)
    return pipe


def remember_guidance(pipe, model: str | os.PathLike | None) -> None:
    """Record the guidance scale `pipe` samples with by default: the toy world's for its models, else the reference's."""
    _GUIDANCE[pipe] = guidance_for(model)


def sampling_pipeline(components, scheduler: str = defaults.SAMPLER):
    """A pipeline of these networks with the course's sampler (DPM-Solver++), progress bar off."""
    return with_scheduler(pipeline_from_components(components), scheduler)


def default_size(pipe) -> int:
    """The image size the pipeline was trained for (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def default_guidance(pipe) -> float:
    """The guidance scale to sample this pipeline with: the toy world's for toy-world models, else the reference's."""
    return float(_GUIDANCE.get(pipe, defaults.REFERENCE_GUIDANCE))


def generate(pipe, prompts: str | Sequence[str], seeds: Sequence[int] | int = defaults.SEED,
             num_inference_steps: int | None = None, guidance_scale: float | None = None,
             negative_prompt: str | None = None, size: int | None = None,
             batch_size: int = defaults.SAMPLE_BATCH, latents: np.ndarray | None = None) -> list:
    """PIL images, one per (prompt, seed) pair; the same seed and prompt always give the same image.

    num_inference_steps: 25 (10 under the test profile) when None. guidance_scale: the model's default
    (4 for the toy world, 7.5 for hub models) when None. Every call to the pipeline holds exactly
    batch_size pictures (a short batch is padded, the extras dropped): the sampling loop compiles once for
    a pipeline, and a picture does not depend on how many others were drawn with it (up to one level in a pixel or
    two: its place in the batch can change the arithmetic's last bit; another batch shape is another graph, with
    last-bit differences). Use batch_size=1 for single pictures from a large model.
    latents: the starting noise itself, one (C, H, W) array per prompt (starting_noise draws the seeds' own).
    """
    prompts, seeds = checked_prompts_and_seeds(prompts, seeds)
    if num_inference_steps is not None and (isinstance(num_inference_steps, bool)
                                            or not isinstance(num_inference_steps, int) or num_inference_steps < 1):
        raise InputError(f"num_inference_steps={num_inference_steps!r}: give a whole number of denoising steps, at "
                         f"least 1 (25 is the course's; None picks it).")
    if latents is not None and len(latents) != len(prompts):
        raise InputError(f"{len(latents)} starting latents for {len(prompts)} prompts: give one per prompt "
                         f"(starting_noise(pipe, seeds) draws them).")
    size = size or default_size(pipe)
    steps = num_inference_steps or defaults.inference_steps()
    guidance = default_guidance(pipe) if guidance_scale is None else guidance_scale
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        pad = batch_size - len(chunk)
        generators = [np.random.default_rng(s) for s in chunk_seeds + chunk_seeds[:1] * pad]
        given = None
        if latents is not None:
            given = np.asarray(latents[start:start + batch_size], np.float32)
            given = import_quietly("mindspore").Tensor(np.concatenate([given, given[:1].repeat(pad, 0)]))
        call = dict(num_inference_steps=steps, guidance_scale=guidance,
                    negative_prompt=[negative_prompt] * batch_size if negative_prompt else None,
                    height=size, width=size, generator=generators, latents=given)
        table = loop_table(pipe, steps)
        capacity = loop_capacity(len(table.timesteps)) if table is not None else None
        with first_call_said(pipe, size, batch_size, guided=guidance > 1, capacity=capacity):
            if table is not None:
                out = sample_in_one_graph(pipe, chunk + chunk[:1] * pad, table, **call)
            else:
                out = pipe(chunk + chunk[:1] * pad, output_type="pil", **call)[0]
        images += list(out)[:len(chunk)]
    return images


def first_call_said(pipe, size: int, batch_size: int, guided: bool, capacity: int | None = None):
    """The first sampling call of a UNet at a picture size and batch (and, for the loop compiled as one graph, a
    capacity of steps) compiles its graph: said, with how long it took last time on this machine and the seconds so
    far; later calls go through unannounced."""
    shape = (size, batch_size, guided, capacity)
    seen = _COMPILED_SHAPES.setdefault(pipe.unet, set())
    if shape in seen:
        return contextlib.nullcontext()
    seen.add(shape)
    model = Path(str(getattr(pipe, "name_or_path", None) or type(pipe.unet).__name__)).name
    key = f"sampling: {model} {size} px, batch {batch_size}, {'guided' if guided else 'unguided'}"
    if capacity is not None:
        key += f", up to {capacity} steps in one graph"
    return said_wait("compiling the sampler (first call at this size)", key)


# ------------------------------------------------------------------ the sampling loop as one compiled graph
# A deterministic sampler (DPM-Solver++, DDIM, PNDM, Euler) makes each step's latents a weighted sum of the starting
# noise and the guided predictions so far, with weights that depend on the step alone. So its whole schedule is one
# table, read off the scheduler itself by running its step on unit vectors, and the loop (UNet, guidance, sampler
# step) compiles into one graph, where the pipeline launches some twenty small ops from Python at every step.
# LOOP_CHECK: the largest difference allowed between the table and the scheduler on random numbers; above it (a
# sampler that draws noise or clips) the pipeline's own loop samples.
LOOP_CHECK = 1e-4
# The loop's graph holds room for LOOP_CAPACITY UNet calls (the table padded with zeros, the count given at run time),
# so 5, 25 or 50 steps share one compile; a longer schedule gets the next power of two.
LOOP_CAPACITY = 64
_LOOPS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # unet -> {dtype: its SamplingLoop}
_TABLES: dict = {}  # (scheduler class, its config, steps) -> LoopTable or None


@dataclass(frozen=True)
class LoopTable:
    """A sampler's schedule for a fixed number of steps, as numbers: for UNet call i, its timestep and the factor the
    sampler scales its input by, and the latents before it as weights over (starting noise, prediction 0, ...,
    prediction n-1); row n gives the final latents."""

    weights: np.ndarray  # (calls + 1, calls + 1)
    input_scales: np.ndarray  # (calls,)
    timesteps: np.ndarray  # (calls,), float32 for every sampler: the UNet embeds them as float32, one graph serves all


def read_loop_table(scheduler, steps: int) -> LoopTable | None:
    """The table of `scheduler` run for `steps` steps (on a copy: the pipeline's own is untouched), or None when the
    sampler is not a fixed weighted sum (checked against its step on random numbers)."""
    import mindspore as ms

    def run(noise: np.ndarray, predictions) -> tuple[np.ndarray, list, list]:
        copy = type(scheduler).from_config(scheduler.config)
        copy.set_timesteps(steps)
        x, rows, scales, times = ms.Tensor(noise), [], [], []
        for i, t in enumerate(copy.timesteps):
            rows.append(x.asnumpy())
            scales.append(float(copy.scale_model_input(ms.Tensor(np.ones(1, np.float32)), t).asnumpy()[0]))
            times.append(t.asnumpy() if hasattr(t, "asnumpy") else np.asarray(t))
            x = copy.step(ms.Tensor(predictions(i)), t, x, return_dict=False)[0]
        return np.stack(rows + [x.asnumpy()]), scales, times

    probe = type(scheduler).from_config(scheduler.config)
    probe.set_timesteps(steps)
    calls = len(probe.timesteps)
    unit = np.eye(calls + 1, dtype=np.float32)
    rng = np.random.default_rng(0)
    noise, predictions = rng.standard_normal(6).astype(np.float32), rng.standard_normal((calls, 6)).astype(np.float32)
    try:
        weights, scales, times = run(unit[0], lambda i: unit[i + 1])
        checked = run(noise, lambda i: predictions[i])[0]
    except Exception:  # a sampler that needs what a probe does not give (a generator, a kernel): the pipeline samples
        return None
    basis = np.concatenate([noise[None], predictions])
    if not np.allclose(weights @ basis, checked, atol=LOOP_CHECK, rtol=LOOP_CHECK):
        return None
    return LoopTable(weights, np.asarray(scales, np.float32), np.asarray(times, np.float32))


def loop_table(pipe, steps: int) -> LoopTable | None:
    """The pipeline's sampler as a table (cached), or None where the loop cannot run as one graph: not a plain
    Stable Diffusion or SDXL pipeline (a test's stand-in), or a sampler that draws noise."""
    diffusers = import_quietly("mindone.diffusers")
    if type(pipe) not in (diffusers.StableDiffusionPipeline, diffusers.StableDiffusionXLPipeline) \
            or pipe.unet.config.time_cond_proj_dim is not None:
        return None
    key = (type(pipe.scheduler).__name__, json.dumps(dict(pipe.scheduler.config), sort_keys=True, default=str), steps)
    if key not in _TABLES:
        _TABLES[key] = read_loop_table(pipe.scheduler, steps)
    return _TABLES[key]


@functools.cache
def sampling_loop_class():
    """nn.Cell running every denoising step in one graph (defined on first use: importing the package loads no
    MindSpore)."""
    import mindspore as ms
    from mindspore import nn, ops

    class SamplingLoop(nn.Cell):
        """The latents of each step from the table's row, the UNet's guided prediction kept for the rows after it."""

        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def construct(self, noise, embeddings, weights, input_scales, timesteps, calls, scale, guided: bool,
                      text_embeds=None, time_ids=None):
            capacity = input_scales.shape[0]
            added = None if text_embeds is None else {"text_embeds": text_embeds, "time_ids": time_ids}  # SDXL
            spread = (capacity,) + (1,) * noise.ndim
            predictions = ops.zeros(spread[:1] + noise.shape, noise.dtype)
            i = ms.Tensor(0, ms.int32)
            while i < calls:
                row = weights[i]
                latents = row[0] * noise + (row[1:].reshape(spread) * predictions).sum(0)
                model_input = ops.cat([latents, latents]) if guided else latents
                out = self.unet(model_input * input_scales[i], timesteps[i], encoder_hidden_states=embeddings,
                                added_cond_kwargs=added, return_dict=False)[0]
                if guided:
                    uncond, cond = out.chunk(2)
                    out = uncond + scale * (cond - uncond)
                predictions = predictions + (ops.arange(capacity) == i).astype(noise.dtype).reshape(spread) * out
                i = i + 1
            row = weights[capacity]  # padded_table puts the final latents' row last
            return row[0] * noise + (row[1:].reshape(spread) * predictions).sum(0)

    return SamplingLoop


def loop_capacity(calls: int) -> int:
    """Room for `calls` UNet calls in the loop's graph: LOOP_CAPACITY, or the next power of two above it."""
    capacity = LOOP_CAPACITY
    while capacity < calls:
        capacity *= 2
    return capacity


def padded_table(table: LoopTable) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The table's weights, input scales and timesteps padded to loop_capacity (zero weights: the rows and columns
    of calls that never run add nothing)."""
    calls, capacity = len(table.timesteps), loop_capacity(len(table.timesteps))
    weights = np.zeros((capacity + 1, capacity + 1), np.float32)
    weights[:calls, :calls + 1] = table.weights[:calls]
    weights[capacity, :calls + 1] = table.weights[calls]  # the final latents: the row after the last call
    scales, timesteps = np.ones(capacity, np.float32), np.zeros(capacity, np.float32)
    scales[:calls], timesteps[:calls] = table.input_scales, table.timesteps
    return weights, scales, timesteps


def sampling_loop(unet):
    """The compiled loop of this UNet: one per UNet and weight type, keeping its graphs for every shape it met."""
    dtype = next(iter(unet.get_parameters())).dtype
    loops = _LOOPS.setdefault(unet, {})
    if dtype not in loops:
        loops[dtype] = sampling_loop_class()(unet)
    return loops[dtype]


def sample_in_one_graph(pipe, prompts: list[str], table: LoopTable, num_inference_steps: int, guidance_scale: float,
                        negative_prompt, height: int, width: int, generator, latents) -> list:
    """PIL pictures as the pipeline draws them (its prompt encoding, seeded noise, guidance off at scale <= 1,
    decoding), the denoising loop run as one compiled graph."""
    import mindspore as ms
    from mindspore import ops

    guided = guidance_scale > 1
    added = ()
    if getattr(pipe, "text_encoder_2", None) is not None:  # SDXL: the pooled vector and the size/crop time ids too
        positive, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=prompts, num_images_per_prompt=1, do_classifier_free_guidance=guided, negative_prompt=negative_prompt)
        ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=positive.dtype,
                                     text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
        pooled = ops.cat([negative_pooled, pooled]) if guided else pooled
        added = (pooled, ids.tile((pooled.shape[0], 1)))
    else:
        positive, negative = pipe.encode_prompt(prompts, 1, guided, negative_prompt)
    embeddings = ops.cat([negative, positive]) if guided else positive
    pipe.scheduler.set_timesteps(num_inference_steps)  # as the pipeline does first: the noise's scale depends on it
    noise = pipe.prepare_latents(len(prompts), pipe.unet.config.in_channels, height, width, positive.dtype,
                                 generator, latents)
    weights, scales, timesteps = padded_table(table)
    final = sampling_loop(pipe.unet)(noise, embeddings, ms.Tensor(weights, noise.dtype), ms.Tensor(scales, noise.dtype),
                                     ms.Tensor(timesteps), ms.Tensor(len(table.timesteps), ms.int32),
                                     ms.Tensor(guidance_scale, noise.dtype), guided, *added)
    pixels = pipe.vae.decode((final / pipe.vae.config.scaling_factor).to(pipe.vae.dtype), return_dict=False)[0]
    return pipe.image_processor.postprocess(pixels, output_type="pil", do_denormalize=[True] * len(prompts))


def checked_prompts_and_seeds(prompts, seeds) -> tuple[list[str], list[int]]:
    """(prompts, one seed each) from a prompt or a list of them and a first seed or a list of seeds; InputError with
    what to give otherwise."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise InputError(f"prompts={prompts!r}: give a prompt or a list of prompts, e.g. 'a photo of sks star'.")
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = list(range(seeds, seeds + len(prompts)))
    if not isinstance(seeds, (list, tuple, range)) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
        raise InputError(f"seeds={seeds!r}: give a whole number (the first seed) or one whole number per prompt.")
    if len(seeds) != len(prompts):
        raise InputError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    return list(prompts), list(seeds)


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
    return share_modes(output_dir)


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


def predicted_clean(pipe, latents, t, prediction):
    """The clean latents the UNet's prediction implies at step t (the forward process undone): from a noise
    prediction ε̂, (x_t - √(1-ᾱ_t) ε̂) / √ᾱ_t; from a v-prediction v̂ (v = √ᾱ_t ε - √(1-ᾱ_t) x), √ᾱ_t x_t - √(1-ᾱ_t) v̂."""
    a = float(pipe.scheduler.alphas_cumprod[int(t)])
    if pipe.scheduler.config.prediction_type == "v_prediction":
        return a ** 0.5 * latents - (1 - a) ** 0.5 * prediction
    return (latents - (1 - a) ** 0.5 * prediction) / a ** 0.5


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
    """One row per prompt, one column per guidance scale, the same seed and timesteps everywhere; returns the figure.

    Every picture comes from sample_by_hand, the package's own guided step (guide): scale 0 is the prediction
    without the prompt, as the formula says. (mindone's pipeline switches guidance off for scale <= 1 and draws the
    prompt's picture instead, so there scale 0 looks exactly like scale 1.)
    """
    from .common.viz import progress_bar, show_images

    images, titles = [], []
    bar = progress_bar(len(prompts) * len(scales), "sampling with the guided step", unit="picture")
    for prompt in prompts:
        for scale in scales:
            images.append(sample_by_hand(pipe, prompt, seed, num_inference_steps, guidance_scale=scale)[0])
            bar.update()
            titles.append(f"scale {scale:g}" + ("\n(no prompt)" if scale == 0 else "") + (f"\n{prompt}" if scale == scales[0] else ""))
    bar.close()
    return show_images(images, titles=titles, ncols=len(scales), scale=1.6)


def guidance_off_switch(pipe, prompt: str, seed: int = defaults.SEED, num_inference_steps: int | None = None) -> dict:
    """Mean absolute difference (0-255) between pictures of one prompt and seed: mindone's pipeline at scale 0 vs
    at scale 1 (the same picture: it turns guidance off for scale <= 1), and the package's own guided step at
    scale 0 (the prediction without the prompt) vs the pipeline at scale 1."""
    def pixels(image) -> np.ndarray:
        return np.asarray(image, dtype=np.float32)

    def drawn(scale: float):
        return generate(pipe, [prompt], [seed], num_inference_steps=num_inference_steps, guidance_scale=scale,
                        batch_size=1)[0]

    at_one = pixels(drawn(1.0))
    by_hand = pixels(sample_by_hand(pipe, prompt, seed, num_inference_steps, guidance_scale=0.0)[0])
    return {"pipeline: scale 0 vs scale 1": float(np.abs(pixels(drawn(0.0)) - at_one).mean()),
            "guided step: scale 0 vs pipeline scale 1": float(np.abs(by_hand - at_one).mean())}


def starting_noise(pipe, seeds: Sequence[int], shift=None) -> np.ndarray:
    """The starting latents generate() draws for these seeds (one (C, H, W) draw each, as the pipeline makes it),
    plus `shift` (one value per channel) added to every pixel when given."""
    size = default_size(pipe) // pipe.vae_scale_factor
    channels = pipe.unet.config.in_channels
    noise = np.concatenate([np.random.default_rng(s).standard_normal((1, channels, size, size)) for s in seeds])
    if shift is not None:
        noise = noise + np.asarray(shift, dtype=np.float64).reshape(1, channels, 1, 1)
    return noise.astype(np.float32)


def background_shift(pipe, background: str, kept: float) -> np.ndarray:
    """What a schedule that keeps `kept` (√ᾱ_T) of the picture at its last timestep leaves of a plain `background`
    picture's latent: its channel means times `kept`, one value per channel."""
    import mindspore as ms

    from .common import scenes
    from .models import vae_cells

    size = default_size(pipe)
    plain = np.full((1, 3, size, size), np.array(scenes.BACKGROUNDS[background], np.float32)[:, None, None] / 127.5 - 1)
    encode, _ = vae_cells(pipe.vae)  # the latents' mean, times the scaling factor: what the UNet sees
    return kept * encode(ms.Tensor(plain, ms.float32)).asnumpy()[0].mean((1, 2))


@dataclass(repr=False)
class BackgroundProbe(Table):
    """Pictures from prompts that differ only in the background word, one seed per row: which background came out."""

    words: tuple
    seeds: tuple
    got: list  # per seed, the background each word's picture has
    images: list
    shifted_toward: str | None = None
    thing: str = "red circle"
    header = ("seed", "asked -> drawn")

    @property
    def followed(self) -> float:
        """Share of pictures whose background is the one their prompt asks for."""
        return float(np.mean([g == w for row in self.got for g, w in zip(row, self.words)]))

    @property
    def caption(self) -> str:
        shifted = f"; every starting noise shifted toward {self.shifted_toward}" if self.shifted_toward else ""
        return f"background as asked in {self.followed:.0%} of {len(self.seeds) * len(self.words)} pictures{shifted}"

    def rows(self) -> list[tuple]:
        return [(seed, ", ".join(f"{w} -> {g}" for w, g in zip(self.words, row))) for seed, row in zip(self.seeds, self.got)]

    @property
    def label(self) -> str:
        return f"noise shifted toward {self.shifted_toward}" if self.shifted_toward else "the seed's own noise"

    def show(self):
        return show_background_probes([self])


def show_background_probes(probes: Sequence[BackgroundProbe], suptitle: str | None = None):
    """The probes' pictures one under the other, a row per seed (labelled on the left), a column per background
    word; returns the figure."""
    import matplotlib.pyplot as plt

    words = probes[0].words
    rows = [(probe, seed, probe.images[r * len(words):(r + 1) * len(words)])
            for probe in probes for r, seed in enumerate(probe.seeds)]
    fig, axes = plt.subplots(len(rows), len(words), figsize=(1.3 * len(words) + 1.6, 1.3 * len(rows) + 0.6), squeeze=False)
    for r, (probe, seed, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"on {words[c]}", fontsize=9)
        label = f"seed {seed}" + (f"\n{probe.label}\nas asked: {probe.followed:.0%}" if seed == probe.seeds[0] else "")
        axes[r][0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    fig.suptitle(suptitle or f"a photo of a {probes[0].thing} on a <word> background", fontsize=10)
    fig.tight_layout()
    return fig


def background_probe(pipe, thing: str = "red circle", words: Sequence[str] = ("white", "black", "blue", "green", "yellow"),
                     seeds: Sequence[int] = (0, 1, 2), shift_toward: str | None = None, kept: float = 0.068,
                     num_inference_steps: int | None = None) -> BackgroundProbe:
    """`a photo of a <thing> on a <word> background` for every word, the same starting noise in each row (one seed
    per row): does the word choose the background, or the noise? shift_toward: add to every starting noise what a
    schedule keeping `kept` of the picture at its last timestep (SD v1: 0.068) leaves of that background."""
    from .common import scenes

    prompts = [f"a photo of a {thing} on a {w} background" for _ in seeds for w in words]
    row_seeds = [s for s in seeds for _ in words]
    shift = background_shift(pipe, shift_toward, kept) if shift_toward else None
    images = generate(pipe, prompts, row_seeds, num_inference_steps=num_inference_steps,
                      latents=starting_noise(pipe, row_seeds, shift))
    got = [[scenes.background_name(images[r * len(words) + i]) for i in range(len(words))] for r in range(len(seeds))]
    return BackgroundProbe(tuple(words), tuple(seeds), got, images, shift_toward, thing)


def denoising_trajectory(pipe, prompt: str, seed: int = defaults.SEED, num_inference_steps: int | None = None,
                         columns: int = 6):
    """Draw what the model believes the picture is at a few steps of sampling (the first step's guess first, the
    sample last); returns those pictures."""
    from .common.viz import show_images

    steps = num_inference_steps or defaults.inference_steps()
    final, kept = sample_by_hand(pipe, prompt, seed, steps, keep_every=max(1, steps // (columns - 1)))
    images = [im for _, im in kept][:columns - 1] + [final]
    titles = [f"step {i} of {steps}\n(predicted)" for i, _ in kept][:columns - 1] + [f"step {steps}: the sample"]
    show_images(images, titles=titles, ncols=len(images), scale=1.6, suptitle=prompt)
    return images

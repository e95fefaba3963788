"""Chapter 05: sampling images from a (fine-tuned) pipeline with a compiled UNet and fixed seeds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .runtime import import_quietly

INFERENCE_STEPS = 25  # denoising steps per image
FAST_INFERENCE_STEPS = 10  # under DREAMBOOTH_NB_FAST=1
SCHEDULERS = ("DPMSolverMultistepScheduler", "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler")


def inference_steps() -> int:
    """Denoising steps for this chapter's samples: fewer under DREAMBOOTH_NB_FAST=1."""
    from .runtime import fast_profile

    return FAST_INFERENCE_STEPS if fast_profile() else INFERENCE_STEPS


def with_scheduler(pipe, name: str = "DPMSolverMultistepScheduler"):
    """Swap the pipeline's sampler for another diffusers scheduler built from the same config."""
    if name not in SCHEDULERS:
        raise ValueError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.")
    diffusers = import_quietly("mindone.diffusers")
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    return pipe


def pipeline_from_components(components, scheduler: str = "PNDMScheduler", skip_text_encoder: bool = False):
    """A StableDiffusionPipeline sharing the given networks (no copy): for sampling during or after training."""
    diffusers = import_quietly("mindone.diffusers")
    base = getattr(diffusers, scheduler).from_config(components.noise_scheduler.config)
    return diffusers.StableDiffusionPipeline(
        unet=components.unet, vae=components.vae, text_encoder=None if skip_text_encoder else components.text_encoder,
        tokenizer=components.tokenizer, scheduler=base, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def training_settings(folder: str | os.PathLike) -> dict:
    """The TrainConfig values a training run saved next to its model (train_config.json, or a checkpoint's state.json)."""
    import json

    folder = Path(folder)
    for path, key in ((folder / "train_config.json", None), (folder / "state.json", "config")):
        if path.is_file():
            values = json.loads(path.read_text(encoding="utf-8"))
            return values[key] if key else values
    return {}


def load_pipeline(model: str | os.PathLike | None = None, scheduler: str = "DPMSolverMultistepScheduler"):
    """A StableDiffusionPipeline from a hub id, a folder (a training output_dir or one of its checkpoint-N), or an embedded name.

    A checkpoint holds only the trained networks, so the rest comes from the base model it was trained
    from; so does the text encoder of a model saved with --skip_save_text_encoder.
    """
    from .models import resolve_model, text_encoder_class

    diffusers = import_quietly("mindone.diffusers")
    folder = Path(str(model)) if model is not None else None
    settings = training_settings(folder) if folder is not None and folder.is_dir() else {}
    if settings and not (folder / "model_index.json").is_file():
        pipe = pipeline_from_components(checkpoint_components(folder, settings["pretrained_model_name_or_path"]))
    elif settings and not (folder / "text_encoder").is_dir():
        base = resolve_model(settings["pretrained_model_name_or_path"])
        text_encoder = text_encoder_class(base).from_pretrained(base, subfolder="text_encoder")
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(folder), text_encoder=text_encoder)
    else:
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(resolve_model(model))
    pipe.set_progress_bar_config(disable=True)
    return with_scheduler(pipe, scheduler)


def checkpoint_components(folder: Path, base_model: str):
    """The base model's components with the networks found in `folder` (unet/, text_encoder/) swapped in."""
    from .models import load_components

    diffusers = import_quietly("mindone.diffusers")
    components = load_components(base_model)
    if (folder / "unet").is_dir():
        components.unet = diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    if (folder / "text_encoder").is_dir():
        components.text_encoder = type(components.text_encoder).from_pretrained(str(folder / "text_encoder"))
    return components


def load_weights(pipe, model: str | os.PathLike) -> list[str]:
    """Put the networks a run saved (an output_dir or a checkpoint-N: unet/, text_encoder/) into an existing pipeline.

    The pipeline keeps its compiled sampling graphs, so switching between models costs neither a second
    compile nor a second copy of the graphs in memory. Returns the names of the networks replaced.
    """
    import mindspore as ms

    folder = Path(model)
    parts = [name for name in ("unet", "text_encoder") if (folder / name / "config.json").is_file()]
    if not parts:
        raise FileNotFoundError(f"{folder} holds no unet/ or text_encoder/ folder: give a training output_dir or "
                                f"one of its checkpoint-N folders.")
    for name in parts:
        target = getattr(pipe, name)
        saved = type(target).from_pretrained(str(folder / name))
        values = dict(saved.parameters_and_names())
        by_name = {param.name: values[key] for key, param in target.parameters_and_names()}
        not_loaded, _ = ms.load_param_into_net(target, by_name, strict_load=True)
        if not_loaded:
            raise ValueError(f"{folder / name} does not fit this pipeline's {name}: {not_loaded[:3]} ... missing.")
    return parts


def default_size(pipe) -> int:
    """The image size the pipeline was trained for (UNet sample size x VAE scale factor)."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def generate(pipe, prompts: str | Sequence[str], seeds: Sequence[int] | int = 0, num_inference_steps: int = 25,
             guidance_scale: float = 7.5, negative_prompt: str | None = None, size: int | None = None,
             batch_size: int = 4) -> list:
    """PIL images, one per (prompt, seed) pair; the same seed and prompt always give the same image.

    Every call to the pipeline holds exactly batch_size pictures (a short batch is padded, the extras
    dropped): the sampling loop compiles once for a pipeline, and a picture does not depend on how many
    others were drawn with it (another batch shape is another graph, with last-bit differences).
    Use batch_size=1 for single pictures from a large model.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
    if len(seeds) != len(prompts):
        raise ValueError(f"Got {len(prompts)} prompts but {len(seeds)} seeds; give one seed per prompt.")
    size = size or default_size(pipe)
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        pad = batch_size - len(chunk)
        generators = [np.random.default_rng(s) for s in chunk_seeds + chunk_seeds[:1] * pad]
        out = pipe(chunk + chunk[:1] * pad, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                   negative_prompt=[negative_prompt] * batch_size if negative_prompt else None,
                   height=size, width=size, generator=generators, output_type="pil")
        images += list(out[0])[:len(chunk)]
    return images


def save_images(images: Sequence, folder: str | os.PathLike, prefix: str = "image") -> list[Path]:
    """Write images as numbered PNGs (atomically) and return their paths."""
    from .viz import save_atomic

    return [save_atomic(im, Path(folder) / f"{prefix}-{i:03d}.png") for i, im in enumerate(images)]


# ------------------------------------------------------------------ chapter 05: before and after
@dataclass(repr=False)
class Comparison:
    """The same prompts and seeds sampled from two models: `before` (base) and `after` (fine-tuned)."""

    prompts: list
    seeds: list
    before: list
    after: list

    def grid(self):
        """One PIL picture: the base model's images on the top row, the fine-tuned model's below."""
        from .viz import image_grid

        return image_grid(self.before + self.after, ncols=len(self.prompts))

    def show(self, scale: float = 2.0):
        """Both rows with titles (prompt and seed on top, 'fine-tuned' below); returns the figure."""
        from .viz import show_images

        titles = [f"base · seed {s}\n{p}" for p, s in zip(self.prompts, self.seeds)]
        titles += ["fine-tuned"] * len(self.after)
        return show_images(self.before + self.after, titles=titles, ncols=len(self.prompts), scale=scale)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write before/after images and the grid (before_after.png) into `folder`; returns the grid's path."""
        from .viz import save_atomic

        save_images(self.before, folder, "base")
        save_images(self.after, folder, "tuned")
        return save_atomic(self.grid(), Path(folder) / "before_after.png")

    def __repr__(self) -> str:
        return f"Comparison({len(self.prompts)} prompts x 2 models, seeds {self.seeds})"


def as_pipeline(model, scheduler: str = "DPMSolverMultistepScheduler"):
    """A pipeline as it is, or loaded from a name or folder."""
    return model if hasattr(model, "unet") else load_pipeline(model, scheduler)


def compare_models(base, tuned, prompts: Sequence[str], seeds: Sequence[int] | int = 0, **sampling) -> Comparison:
    """Sample the same prompts with the same seeds from the base and the fine-tuned model (pipelines, names or folders)."""
    prompts = list(prompts)
    seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
    before = generate(as_pipeline(base), prompts, seeds, **sampling)
    after = generate(as_pipeline(tuned), prompts, seeds, **sampling)
    return Comparison(prompts, seeds, before, after)


def trained_model(output_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Chapter 04's fine-tuned model folder; when it is missing, a short run with chapter 04's settings makes it."""
    from .models import is_diffusers_folder
    from .train import train_dreambooth, tutorial_config

    config = tutorial_config(**({"output_dir": str(output_dir)} if output_dir else {}))
    folder = Path(config.output_dir)
    if not is_diffusers_folder(folder):
        print(f"{folder} has no trained model yet: training one with chapter 04's settings ...")
        train_dreambooth(config, progress=progress)
    return folder

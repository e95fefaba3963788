"""Chapter 05: the fine-tuned model: loading it (whole, from a checkpoint, or into a pipeline), before and after."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .common import defaults
from .common.assets import is_diffusers_folder, resolve_model, training_settings
from .common.runtime import import_quietly, write_weights
from .sampling import generate, pipeline_from_components, remember_guidance, save_images, with_scheduler
from .common.errors import InputError, MissingFileError


def load_pipeline(model: str | os.PathLike | None = None, scheduler: str = defaults.SAMPLER):
    """A StableDiffusionPipeline from a hub id, a folder (a training output_dir or one of its checkpoint-N), or an embedded name.

    A checkpoint holds only the trained networks, so the rest comes from the base model it was trained
    from; so does the text encoder of a model saved with --skip_save_text_encoder.
    """
    from .models import text_encoder_class

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
    remember_guidance(pipe, model)
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


def swap_weights(pipe, model: str | os.PathLike) -> list[str]:
    """Put the networks a run saved (an output_dir or a checkpoint-N: unet/, text_encoder/) into an existing pipeline.

    The pipeline keeps its compiled sampling graphs, so switching between models costs neither a second
    compile nor a second copy of the graphs in memory. A network the run did not save (the text encoder of a run
    that trained only the UNet) comes from the base model it was trained from, as in load_pipeline, so nothing of
    the model swapped in before stays behind. Returns the names of the networks replaced.
    """
    folder = Path(model)
    parts = {name: folder / name for name in ("unet", "text_encoder") if (folder / name / "config.json").is_file()}
    if not parts:
        raise MissingFileError(f"{folder} holds no unet/ or text_encoder/ folder: give a training output_dir or "
                                f"one of its checkpoint-N folders.")
    base = training_settings(folder).get("pretrained_model_name_or_path")
    for name in ("unet", "text_encoder"):
        if name not in parts and base is not None:
            parts[name] = Path(resolve_model(base)) / name
    for name, source in parts.items():
        target = getattr(pipe, name)
        saved = type(target).from_pretrained(str(source))
        write_weights(dict(target.parameters_and_names()), dict(saved.parameters_and_names()), str(source),
                      "Swap in a run of this pipeline's base model.")
    return list(parts)


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
        from .common.viz import image_grid

        return image_grid(self.before + self.after, ncols=len(self.prompts))

    def show(self, scale: float = 2.0):
        """Both rows with titles (prompt and seed on top, 'fine-tuned' below); returns the figure."""
        from .common.viz import show_images

        titles = [f"base · seed {s}\n{p}" for p, s in zip(self.prompts, self.seeds)]
        titles += ["fine-tuned"] * len(self.after)
        return show_images(self.before + self.after, titles=titles, ncols=len(self.prompts), scale=scale)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write before/after images and the grid (before_after.png) into `folder`; returns the grid's path."""
        from .common.files import save_atomic

        save_images(self.before, folder, "base")
        save_images(self.after, folder, "tuned")
        return save_atomic(self.grid(), Path(folder) / "before_after.png")

    def __repr__(self) -> str:
        return f"Comparison({len(self.prompts)} prompts x 2 models, seeds {self.seeds})"


def as_pipeline(model, scheduler: str = defaults.SAMPLER):
    """A pipeline as it is, or loaded from a name or folder."""
    return model if hasattr(model, "unet") else load_pipeline(model, scheduler)


def compare_models(base, tuned, prompts: Sequence[str], seeds: Sequence[int] | int = defaults.SEED, pipe=None,
                   **sampling) -> Comparison:
    """Sample the same prompts with the same seeds from the base and the fine-tuned model (pipelines, names or folders).

    pipe: draw both with this one pipeline instead, each model's weights swapped into it (base and tuned are then
    names or folders): one compiled sampler and the same sampler settings for both; it ends holding `tuned`'s."""
    prompts = list(prompts)
    seeds = list(range(seeds, seeds + len(prompts))) if isinstance(seeds, int) else list(seeds)
    if pipe is None:
        before = generate(as_pipeline(base), prompts, seeds, **sampling)
        after = generate(as_pipeline(tuned), prompts, seeds, **sampling)
    else:
        if not all(isinstance(m, (str, os.PathLike)) for m in (base, tuned)):
            raise InputError("with pipe=, give base and tuned as model names or folders: their weights are swapped "
                             "into pipe (or leave pipe out to compare two pipelines).")
        swap_weights(pipe, resolve_model(base))
        before = generate(pipe, prompts, seeds, **sampling)
        swap_weights(pipe, resolve_model(tuned))
        after = generate(pipe, prompts, seeds, **sampling)
    return Comparison(prompts, seeds, before, after)


def trained_model(output_dir: str | os.PathLike | None = None, progress: bool = True) -> Path:
    """Chapter 04's fine-tuned model folder; when it is missing, a short run with chapter 04's settings makes it."""
    from .common.config import tutorial_config
    from .train import train_dreambooth

    config = tutorial_config(with_prior=True, **({"output_dir": str(output_dir)} if output_dir else {}))
    folder = Path(config.output_dir)
    if not is_diffusers_folder(folder):
        print(f"{folder} has no trained model yet: training one with chapter 04's settings ...")
        train_dreambooth(config, progress=progress)
    return folder

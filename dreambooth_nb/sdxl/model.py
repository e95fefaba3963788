"""The pieces of an SDXL model: two tokenizers and text encoders, the VAE, a UNet with text-time conditioning."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common import defaults
from ..common.assets import resolve_model
from ..common.runtime import import_quietly
from ..models import Components, count_parameters, hub_access, require_model_parts
from ..sampling import remember_guidance
from ..common.errors import MissingFileError
from ..common.tables import Table

SDXL_PARTS = ("unet", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


@dataclass
class SDXLComponents(Components):
    """Stable Diffusion's pieces plus SDXL's second tokenizer and text encoder (CLIP with a projection)."""

    tokenizer_2: Any = None
    text_encoder_2: Any = None


def load_sdxl_components(model: str | os.PathLike | None = None, vae: str | os.PathLike | None = None,
                         revision: str | None = None, variant: str | None = None) -> SDXLComponents:
    """Both tokenizers and text encoders, the VAE (or another one: --pretrained_vae_model_name_or_path), the UNet and
    the DDPM noise schedule of an SDXL model."""
    from transformers import AutoTokenizer

    diffusers = import_quietly("mindone.diffusers")
    transformers = import_quietly("mindone.transformers")
    source = resolve_model(model or defaults.TOY_XL_MODEL)
    require_model_parts(source, sdxl=True)
    missing = [p for p in SDXL_PARTS if Path(source).is_dir() and not (Path(source) / p).is_dir()]
    if missing:
        raise MissingFileError(f"{source} is not an SDXL model: it has no {', '.join(p + '/' for p in missing)} "
                                f"(SDXL has {', '.join(SDXL_PARTS)} and vae). For Stable Diffusion 1.x/2.x use "
                                f"python -m dreambooth_nb.train_lora.")
    common = dict(revision=revision, variant=variant, **hub_access(source, revision))
    local = {"local_files_only": True} if common.get("local_files_only") else {}
    tokenizers = [AutoTokenizer.from_pretrained(source, subfolder=s, revision=revision, use_fast=False, **local)
                  for s in ("tokenizer", "tokenizer_2")]
    text_encoder = transformers.CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common)
    text_encoder_2 = transformers.CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", **common)
    vae_model = diffusers.AutoencoderKL.from_pretrained(str(resolve_model(vae)), **{k: v for k, v in common.items()
                                                                                   if k != "variant"}) if vae else \
        diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **common)
    unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
    scheduler = diffusers.DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision, **local)
    sampler = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", revision=revision, **local)["_class_name"]
    return SDXLComponents(tokenizers[0], text_encoder, vae_model, unet, scheduler, source,
                          sampler if hasattr(diffusers, sampler) else "EulerDiscreteScheduler", tokenizers[1],
                          text_encoder_2)


def sdxl_pipeline(components: SDXLComponents, scheduler: str | None = None):
    """A StableDiffusionXLPipeline sharing the given networks; its sampler `scheduler`, else the model's own."""
    diffusers = import_quietly("mindone.diffusers")
    name = scheduler or components.scheduler_class
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=components.vae, text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer, tokenizer_2=components.tokenizer_2, unet=components.unet,
        scheduler=getattr(diffusers, name).from_config(components.noise_scheduler.config),
        force_zeros_for_empty_prompt=True)
    pipe.set_progress_bar_config(disable=True)
    remember_guidance(pipe, components.source)
    return pipe


def load_sdxl_pipeline(model: str | os.PathLike | None = None, scheduler: str = defaults.SAMPLER):
    """The toy-world SDXL (or any SDXL in diffusers layout) as a pipeline, with the course's sampler."""
    return sdxl_pipeline(load_sdxl_components(model), scheduler)


def encode_prompts(components: SDXLComponents, ids_1, ids_2):
    """SDXL's text conditioning, as its pipeline computes it: both encoders' second-to-last hidden states side by side
    (B, L, d1 + d2), and the second encoder's pooled, projected output (B, projection_dim)."""
    first = components.text_encoder(ids_1, output_hidden_states=True)
    second = components.text_encoder_2(ids_2, output_hidden_states=True)
    from mindspore import ops

    return ops.cat([first[-1][-2], second[-1][-2]], axis=-1), second[0]


def sdxl_prompt_embeddings(pipe, prompt: str) -> tuple[np.ndarray, np.ndarray]:
    """What SDXL's UNet is given for a prompt: the per-token context (1, L, d1 + d2) for cross-attention and the
    pooled vector (1, projection_dim) that is added to the time embedding, as numpy arrays."""
    from ..models import tokenize_with_mask

    ids_1, _ = tokenize_with_mask(pipe.tokenizer, [prompt])
    ids_2, _ = tokenize_with_mask(pipe.tokenizer_2, [prompt])
    import mindspore as ms

    context, pooled = encode_prompts(pipe, ms.Tensor(ids_1), ms.Tensor(ids_2))  # the pipeline holds both encoders
    return context.asnumpy(), pooled.asnumpy()


def time_ids(original_size: tuple[int, int], crop_top_left: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    """SDXL's micro-conditioning of one picture: (original h, w, crop top, left, target h, w) as float32."""
    return np.array([*original_size, *crop_top_left, *target_size], dtype=np.float32)


@contextlib.contextmanager
def conditioned(pipe, original: int, crop: tuple[int, int] = (0, 0)):
    """Inside the block, the pipeline gives its UNet these time ids (original size, crop corner; the target size is
    the picture's) whatever it is asked: the compiled sampling loop takes them as numbers, so nothing recompiles."""
    own = pipe._get_add_time_ids

    def with_ids(original_size, crops_coords_top_left, target_size, **kwargs):
        return own((original, original), tuple(crop), target_size, **kwargs)

    pipe._get_add_time_ids = with_ids
    try:
        yield pipe
    finally:
        del pipe._get_add_time_ids  # the class's own method again


MICRO_ORIGINALS = (8, 16, 64)
MICRO_CROPS = ((0, 0), (0, 8), (8, 0))


def micro_conditioning_grid(pipe, prompt: str, seed: int = defaults.SEED, originals=MICRO_ORIGINALS,
                            crops=MICRO_CROPS, title: str | None = None):
    """The same prompt and seed with only SDXL's time ids changed: one row per original size (the size a training
    picture had before it was resized), one column per crop's top-left corner. Returns the figure."""
    from ..common.viz import show_images
    from ..sampling import generate

    images, titles = [], []
    for original in originals:
        for crop in crops:
            with conditioned(pipe, original, crop):
                images += generate(pipe, [prompt], [seed])
            titles.append(f"original {original} px\ncrop at {tuple(crop)}")
    return show_images(images, titles=titles, ncols=len(crops), scale=1.5, suptitle=title or prompt)


def sharpness(image) -> float:
    """Root mean square of the differences between neighbouring pixels (0-255): an edge blurred over n pixels has the
    same total change in n steps n times smaller, so its squares sum to 1/n of a crisp edge's."""
    x = np.asarray(image, np.float32)
    return float(np.sqrt((np.square(np.diff(x, axis=0)).mean() + np.square(np.diff(x, axis=1)).mean()) / 2))


def object_size(image) -> float:
    """The object's size in pixels: the square root of its area as the judge finds it (0 if there is none)."""
    from ..common.judge import foreground

    return float(np.sqrt(foreground(image).sum()))


def centre_of_object(image) -> tuple[float, float]:
    """(x, y) of the object's centre of mass in pixels, as the judge finds the object (the picture's centre if none)."""
    from ..common.judge import foreground

    mask = foreground(image)
    if not mask.any():
        return (mask.shape[1] - 1) / 2, (mask.shape[0] - 1) / 2
    rows, cols = np.nonzero(mask)
    return float(cols.mean()), float(rows.mean())


@dataclass(repr=False)
class MicroConditioning(Table):
    """Per time-id setting, measured over the same seeds: how crisp the pictures are and where the object sits."""

    measures: dict  # label -> {"original": px, "crop": (top, left), "sharpness": mean, "x": mean, "y": mean}
    seeds: int = 0
    header = ("original size", "crop corner (top, left)", "sharpness", "object size", "object x", "object y")

    def rows(self) -> list[tuple]:
        return [(f"{m['original']} px", str(m["crop"]), f"{m['sharpness']:.1f}", f"{m['size']:.1f}", f"{m['x']:.1f}",
                 f"{m['y']:.1f}") for m in self.measures.values()]

    @property
    def caption(self) -> str:
        return (f"{self.seeds} seeds per row, the same seeds in every row; sharpness: root mean square difference "
                f"between neighbouring pixels (0-255); object size: square root of its area (px); object x, y: its "
                f"centre (16 is the middle)")

    def spread(self, key: str) -> float:
        """Largest minus smallest of one measure across the settings (0: the time ids change nothing)."""
        values = [m[key] for m in self.measures.values()]
        return max(values) - min(values)


def micro_conditioning_measures(pipe, prompt: str, seeds=range(8), originals=MICRO_ORIGINALS,
                                crops=MICRO_CROPS) -> MicroConditioning:
    """Each original size with the crop at (0, 0), then each crop at the largest original size: the mean sharpness
    and object centre over the same seeds (the grid's pictures, measured instead of looked at)."""
    from ..sampling import generate

    seeds = list(seeds)
    settings = [(o, (0, 0)) for o in originals] + [(originals[-1], tuple(c)) for c in crops if tuple(c) != (0, 0)]
    measures = {}
    for original, crop in settings:
        with conditioned(pipe, original, crop):
            images = generate(pipe, [prompt] * len(seeds), seeds)
        centres = np.array([centre_of_object(im) for im in images])
        measures[f"{original} {crop}"] = dict(original=original, crop=crop, x=float(centres[:, 0].mean()),
                                              y=float(centres[:, 1].mean()),
                                              size=float(np.mean([object_size(im) for im in images])),
                                              sharpness=float(np.mean([sharpness(im) for im in images])))
    return MicroConditioning(measures, len(seeds))


def show_text_features(pipe, prompt: str):
    """What SDXL's UNet reads for a prompt, as pictures: each token's features from the first encoder and from the
    second (side by side, as cross-attention gets them) and the second encoder's pooled vector. Returns the figure."""
    import matplotlib.pyplot as plt

    from ..models import prompt_tokens

    context, pooled = sdxl_prompt_embeddings(pipe, prompt)
    first = pipe.text_encoder.config.hidden_size
    tokens = [t.replace("</w>", "") for t in prompt_tokens(pipe.tokenizer, prompt).tokens]
    shown = context[0, :len(tokens)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2), gridspec_kw={"width_ratios": [first, shown.shape[1] - first, 12]})
    limit = float(np.abs(shown).max())
    for ax, part, name in ((axes[0], shown[:, :first], "text_encoder (CLIPTextModel)"),
                           (axes[1], shown[:, first:], "text_encoder_2 (with projection)")):
        ax.imshow(part, cmap="coolwarm", vmin=-limit, vmax=limit, aspect="auto")
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
        ax.set_title(f"{name}\n{part.shape[1]} features per token (second-to-last layer)", fontsize=8)
        ax.set_xlabel("feature")
    axes[1].set_yticks([])
    axes[2].imshow(pooled.reshape(-1, 1), cmap="coolwarm", aspect="auto")
    axes[2].set_xticks([])
    axes[2].set_title(f"pooled\n({pooled.shape[1]})", fontsize=8)
    fig.suptitle(f"{prompt!r}: context {tuple(context.shape)} for cross-attention, pooled {tuple(pooled.shape)} "
                 f"added to the time embedding", fontsize=9)
    fig.tight_layout()
    return fig


@dataclass(repr=False)
class SDXLParts(Table):
    """An SDXL pipeline's networks: class, weights, and what each one gives the UNet."""

    parts: list  # (name, class name, weights, role)
    header = ("part", "class", "weights", "what it does")

    def rows(self) -> list[tuple]:
        return [(name, kind, f"{count:,}", role) for name, kind, count, role in self.parts]


def sdxl_parts(pipe) -> SDXLParts:
    """The pieces of an SDXL pipeline with their sizes, read from the loaded networks and their configs."""
    unet = pipe.unet.config
    roles = {
        "text_encoder": f"token features, {pipe.text_encoder.config.hidden_size} per token (second-to-last layer)",
        "text_encoder_2": f"token features, {pipe.text_encoder_2.config.hidden_size} per token, and the pooled vector "
                          f"({pipe.text_encoder_2.config.projection_dim})",
        "unet": f"reads both side by side ({unet.cross_attention_dim} per token), the pooled vector and 6 time ids "
                f"({unet.addition_embed_type}, {unet.addition_time_embed_dim} features each)",
        "vae": f"pictures to latents and back ({pipe.vae.config.latent_channels} channels, 1/"
               f"{2 ** (len(pipe.vae.config.block_out_channels) - 1)} of the size)"}
    return SDXLParts([(name, type(getattr(pipe, name)).__name__, count_parameters(getattr(pipe, name)), role)
                      for name, role in roles.items()])

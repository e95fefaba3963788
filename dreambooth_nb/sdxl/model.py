"""The pieces of an SDXL model: two tokenizers and text encoders, the VAE, a UNet with text-time conditioning."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..common import defaults
from ..common.assets import resolve_model
from ..common.runtime import import_quietly
from ..models import Components, hub_access, require_model_parts
from ..sampling import remember_guidance
from ..common.errors import MissingFileError

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


def micro_conditioning_grid(pipe, prompt: str, seed: int = defaults.SEED, originals=(16, 32, 64),
                            crops=((0, 0), (0, 8), (8, 0)), steps: int | None = None):
    """The same prompt and seed with only SDXL's time ids changed: one row per original size (the size a training
    picture had before it was resized), one column per crop's top-left corner. Returns the figure."""
    from ..common.viz import show_images
    from ..sampling import default_guidance, default_size

    size = default_size(pipe)
    images, titles = [], []
    for original in originals:
        for top, left in crops:
            out = pipe(prompt, original_size=(original, original), crops_coords_top_left=(top, left),
                       target_size=(size, size), height=size, width=size, guidance_scale=default_guidance(pipe),
                       num_inference_steps=steps or defaults.inference_steps(),
                       generator=np.random.default_rng(seed), output_type="pil")
            images.append(out[0][0])
            titles.append(f"original {original} px\ncrop at ({top}, {left})")
    return show_images(images, titles=titles, ncols=len(crops), scale=1.5, suptitle=prompt)

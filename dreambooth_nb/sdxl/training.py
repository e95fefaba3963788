"""DreamBooth LoRA on SDXL with the training engine: SDXL's loss (two text encoders, pooled embedding, size and crop
conditioning, optional EDM-style objective), its batches, and the method the engine trains it with."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from mindspore import ops

from ..batches import BatchMaker, ImageSet, latent_shape
from ..common.config import SDXLLoraTrainConfig
from ..common.errors import UserError
from ..data import crop_with_corner, normalize
from ..lora import TEXT_TARGETS, save_adapters
from ..losses import DreamBoothLoss, dreambooth_loss
from ..models import alphas_cumprod, tokenize_with_mask
from ..train.adapters import chosen_layers
from .model import SDXLComponents, encode_prompts, load_sdxl_components, sdxl_pipeline, time_ids

SDXL_UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # mindone's SDXL LoRA script


class SDXLDreamBoothLoss(DreamBoothLoss):
    """The DreamBooth loss for SDXL: the UNet also reads the pooled text embedding and the size/crop time ids.

    Inputs: pixels, (embeddings | token ids of tokenizer 1), (pooled embedding | token ids of tokenizer 2),
    VAE noise, noise, timesteps, time ids. With `edm`, the objective of EDM-style training: the clean latents
    recovered from the prediction, weighted by 1/sigma^2 (as mindone's script with --do_edm_style_training).
    """

    def __init__(self, unet, vae, text_encoders, alphas, scaling_factor: float, prediction_type: str,
                 with_prior: bool, prior_loss_weight: float, snr_gamma, train_text_encoder: bool, edm: bool = False):
        super().__init__(unet, vae, None, alphas, scaling_factor, prediction_type, with_prior, prior_loss_weight,
                         snr_gamma, train_text_encoder)
        self.text_encoders = text_encoders  # None: the text inputs are precomputed embeddings
        self.edm = edm
        if text_encoders is not None:
            self.text_encoder, self.text_encoder_2 = text_encoders

    def conditioning(self, text_a, text_b):
        """(token embeddings, pooled embedding): as given, or from both text encoders."""
        if self.text_encoders is None:
            return text_a, text_b
        first = self.text_encoder(text_a, output_hidden_states=True)
        second = self.text_encoder_2(text_b, output_hidden_states=True)
        return ops.cat([first[-1][-2], second[-1][-2]], axis=-1), second[0]

    def construct(self, pixels, text_a, text_b, vae_noise, noise, timesteps, time_ids):
        latents = self.latents(pixels, vae_noise)
        a = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        embeddings, pooled = self.conditioning(text_a, text_b)
        conditions = {"text_embeds": pooled, "time_ids": time_ids}
        if not self.edm:
            noisy = a ** 0.5 * latents + (1.0 - a) ** 0.5 * noise
            pred = self.unet(noisy, timesteps, embeddings, added_cond_kwargs=conditions, return_dict=False)[0]
            return self.objective(pred, latents, noise, a, timesteps)
        sigma = ((1.0 - a) / a) ** 0.5
        noisy = latents + sigma * noise  # the Euler (variance exploding) form of the same noising
        pred = self.unet(noisy / (sigma ** 2 + 1.0) ** 0.5, timesteps, embeddings, added_cond_kwargs=conditions,
                         return_dict=False)[0]
        if self.v_prediction:
            clean = pred * (-sigma / (sigma ** 2 + 1.0) ** 0.5) + noisy / (sigma ** 2 + 1.0)
        else:
            clean = pred * (-sigma) + noisy
        return dreambooth_loss(clean, latents, ops.reshape(sigma ** -2.0, (-1,)), self.with_prior,
                               self.prior_loss_weight)


@dataclass
class SDXLBatchMaker(BatchMaker):
    """Every step's SDXL inputs from (seed, step): pixels (random crop, optional flip), text, noise, time ids."""

    sizes: tuple = ()  # original sizes of the instance half, then of the class half
    ids_2: tuple = ()  # the second tokenizer's ids of each half's prompt
    random_flip: bool = False

    def examples(self, step: int, rng: np.random.Generator, center_crop: bool) -> tuple[np.ndarray, ...]:
        pixels, texts_a, texts_b, ids = [], [], [], []
        embeds = self.embeddings or (None, None)
        for half, (images, seed, _) in enumerate(self.halves()):
            from ..batches import batch_indices

            idx = batch_indices(len(images), self.config.train_batch_size, seed, step, self.rank, self.world)
            for i in idx:
                picture, (top, left) = crop_with_corner(images.images[i], self.config.resolution,
                                                        None if center_crop else rng)
                if self.random_flip and rng.random() < 0.5:
                    picture = picture.transpose(0)  # Image.FLIP_LEFT_RIGHT
                pixels.append(normalize(picture))
                ids.append(time_ids(self.sizes[half][i], (top, left), (self.config.resolution,) * 2))
            if embeds[half] is not None:
                prompt_embeds, pooled = embeds[half]
                texts_a.append(np.repeat(prompt_embeds, len(idx), axis=0))
                texts_b.append(np.repeat(pooled, len(idx), axis=0))
            else:
                texts_a.append(np.repeat(images.input_ids, len(idx), axis=0))
                texts_b.append(np.repeat(self.ids_2[half], len(idx), axis=0))
        self._time_ids = np.stack(ids)
        return np.stack(pixels), np.concatenate(texts_a), np.concatenate(texts_b)

    def __call__(self, step: int) -> tuple[np.ndarray, ...]:
        pixels, text_a, text_b, vae_noise, noise, timesteps = super().__call__(step)
        return pixels, text_a, text_b, vae_noise, noise, timesteps, self._time_ids

    def fixed(self) -> tuple[np.ndarray, ...]:
        return (*super().fixed(), self._time_ids)


@dataclass(frozen=True)
class SDXLLoraAdapters:
    """DreamBooth LoRA on SDXL (train_dreambooth_lora_sdxl.py): adapters on the UNet's attention, and with
    --train_text_encoder on both text encoders; the text embeddings computed once when the encoders are frozen.
    A TrainingMethod (train.method)."""

    config_class: type = SDXLLoraTrainConfig
    description: str = ("DreamBooth LoRA on Stable Diffusion XL with MindSpore + mindone; flags match mindone's "
                        "train_dreambooth_lora_sdxl.py.")
    result_kind: str = "adapters"

    @property
    def command(self) -> str:
        return self.config_class.COMMAND

    def load(self, config: SDXLLoraTrainConfig) -> SDXLComponents:
        return load_sdxl_components(config.pretrained_model_name_or_path, config.pretrained_vae_model_name_or_path,
                                    config.revision, config.variant)

    def trained_networks(self, config, components: SDXLComponents) -> dict:
        """The UNet, and both text encoders with --train_text_encoder."""
        nets = {"unet": components.unet}
        if config.train_text_encoder:
            nets.update(text_encoder=components.text_encoder, text_encoder_2=components.text_encoder_2)
        return nets

    def adapter_targets(self, config: SDXLLoraTrainConfig, name: str) -> tuple:
        if name != "unet":
            return TEXT_TARGETS
        targets = chosen_layers(config.lora_layers, SDXL_UNET_TARGETS)
        unsampleable = [t for t in targets if t in ("linear_1", "linear_2") or t.startswith("add_embedding")]
        if unsampleable:  # mindone's SDXL pipeline reads add_embedding.linear_1.in_channels, which a wrapped layer lacks
            raise UserError(f"--lora_layers names {', '.join(unsampleable)}, which would put adapters on the UNet's "
                            f"add_embedding: mindone's SDXL pipeline cannot sample with those. Name "
                            f"time_embedding.linear_1 and time_embedding.linear_2 instead.")
        return targets

    def parameters(self, config, nets: dict, schedule: list):
        """The UNet's adapters at --learning_rate; the text encoders' at --text_encoder_lr (the schedule scaled) and
        their own weight decay, as the reference groups them."""
        unet = list(nets["unet"].trainable_params())
        if not config.train_text_encoder:
            return unet
        ratio = config.text_encoder_lr / config.learning_rate
        text = [p for name in ("text_encoder", "text_encoder_2") for p in nets[name].trainable_params()]
        return [{"params": unet, "lr": schedule},
                {"params": text, "lr": [v * ratio for v in schedule], "weight_decay": config.adam_weight_decay_text_encoder}]

    def loss(self, config, components: SDXLComponents, precomputed: bool):
        sched = components.noise_scheduler
        encoders = None if not config.train_text_encoder else (components.text_encoder, components.text_encoder_2)
        return SDXLDreamBoothLoss(components.unet, components.vae, encoders, alphas_cumprod(sched),
                                  components.vae.config.scaling_factor, sched.config.prediction_type,
                                  config.with_prior_preservation, config.prior_loss_weight, config.snr_gamma,
                                  config.train_text_encoder, config.do_edm_style_training)

    def embeddings(self, config, components: SDXLComponents, image_sets) -> tuple | None:
        """Frozen encoders (the reference's way): each prompt's (embeddings, pooled embedding), computed once."""
        if config.train_text_encoder:
            return None
        import mindspore as ms

        out = []
        for images in image_sets:
            ids_2, _ = tokenize_with_mask(components.tokenizer_2, images.prompt)
            embeds, pooled = encode_prompts(components, ms.Tensor(images.input_ids), ms.Tensor(ids_2))
            out.append((embeds.asnumpy(), pooled.asnumpy()))
        return tuple(out)

    def batches(self, config, components: SDXLComponents, instance, classes, seed, world, embeddings):
        sets = [s for s in (instance, classes) if s is not None]
        sizes = tuple(original_sizes(s) for s in sets)
        ids_2 = tuple(tokenize_with_mask(components.tokenizer_2, s.prompt)[0] for s in sets)
        return SDXLBatchMaker(repeated(instance, config.repeats), classes, config,
                              latent_shape(components, config.resolution),
                              components.noise_scheduler.config.num_train_timesteps, seed, world.rank, world.size,
                              embeddings, (sizes[0] * config.repeats, *sizes[1:]), ids_2, config.random_flip)

    def pipeline(self, components: SDXLComponents, scheduler: str | None = None):
        return sdxl_pipeline(components, scheduler)

    def save_result(self, components: SDXLComponents, output_dir: Path, config) -> Path:
        """pytorch_lora_weights.safetensors with unet.*, text_encoder.* and text_encoder_2.* keys, as diffusers."""
        from mindone.diffusers import StableDiffusionXLPipeline

        nets = {"unet": components.unet, "text_encoder": components.text_encoder,
                "text_encoder_2": components.text_encoder_2}
        return save_adapters(StableDiffusionXLPipeline, nets, output_dir, config)


SDXL_LORA = SDXLLoraAdapters()


def original_sizes(images: ImageSet) -> list[tuple[int, int]]:
    """(height, width) of each photo on disk, in the order the ImageSet holds them."""
    checks = [c for c in images.report.checks if c.usable][:len(images)] if images.report else []
    return [(c.size[1], c.size[0]) for c in checks] or [(im.height, im.width) for im in images.images]


def repeated(images: ImageSet, times: int) -> ImageSet:
    """--repeats: every instance photo `times` times in each epoch."""
    if times == 1:
        return images
    from dataclasses import replace

    return replace(images, images=images.images * times)


def train_sdxl_lora(config: SDXLLoraTrainConfig, components: SDXLComponents | None = None, progress: bool = True,
                    on_step=None):
    """DreamBooth LoRA on SDXL with the training engine; returns its TrainResult."""
    from ..train.engine import train_dreambooth

    return train_dreambooth(config, components, progress, on_step, method=SDXL_LORA)


def sdxl_lora_pipeline(adapters: str | os.PathLike, model: str | os.PathLike | None = None):
    """The toy-world SDXL (or `model`) with the adapters loaded by mindone's load_lora_weights, the guide's way (their
    strength is then fixed at 1: merge_adapters on a plain pipeline gives a slider)."""
    from ..lora import load_adapters
    from .model import load_sdxl_pipeline

    pipe = load_sdxl_pipeline(model)
    load_adapters(pipe, adapters)
    return pipe

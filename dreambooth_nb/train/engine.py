"""The training engine: one compiled step, the loop around it, and the saved result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .. import data, runtime
from ..models import Components, load_components
from .config import TrainConfig


@dataclass
class TrainResult:
    """What a training run leaves: where the model is and the loss of every step."""

    output_dir: Path
    history: list = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False

    def plot(self, ax=None):
        from ..viz import plot_loss

        return plot_loss(self.history, ax)


# ------------------------------------------------------------------------- compiled step
def make_optimizer(params, lr_schedule: list[float], config: TrainConfig):
    """AdamW with the adam_* flags, reading its learning rate from the per-step schedule."""
    from mindspore import nn

    return nn.AdamWeightDecay(
        params, learning_rate=lr_schedule, beta1=config.adam_beta1, beta2=config.adam_beta2,
        eps=config.adam_epsilon, weight_decay=config.adam_weight_decay,
    )


def lr_schedule(config: TrainConfig, total_steps: int) -> list[float]:
    """Learning rate of every step from mindone's schedulers, plus one spare entry.

    mindone 0.3.0 returns exactly `total_steps` values and the optimizer reads index `total_steps`
    after the last update; CPU kernels bounds-check that read, so one extra value is appended.
    """
    from mindone.diffusers.optimization import get_scheduler

    values = get_scheduler(
        config.lr_scheduler, lr=config.learning_rate, num_warmup_steps=config.lr_warmup_steps,
        num_training_steps=total_steps, num_cycles=config.lr_num_cycles, power=config.lr_power,
    )
    values = [float(v) for v in values]
    return values + values[-1:]


def make_train_step(loss_net, optimizer, max_grad_norm: float):
    """A Cell that computes the loss, its gradients, clips them and updates the weights: compiled as one graph."""
    import mindspore as ms
    from mindspore import nn, ops

    class TrainStep(nn.Cell):
        def __init__(self):
            super().__init__()
            self.loss_net, self.optimizer = loss_net, optimizer
            self.grad_fn = ms.value_and_grad(loss_net, None, optimizer.parameters)
            self.max_grad_norm = max_grad_norm

        def construct(self, *inputs):
            loss, grads = self.grad_fn(*inputs)
            if self.max_grad_norm > 0:
                grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
            self.optimizer(grads)
            return loss

    return TrainStep()


# ------------------------------------------------------------------------------ batches
@dataclass
class BatchMaker:
    """Makes step k's inputs on the host from (seed, k) alone: resuming needs only the step number."""

    instance: data.ImageSet
    classes: data.ImageSet | None
    config: TrainConfig
    latent_shape: tuple
    num_timesteps: int
    seed: int
    rank: int = 0
    world: int = 1

    def __call__(self, step: int) -> tuple[np.ndarray, ...]:
        c = self.config
        rng = np.random.default_rng([self.seed, step, 1, self.rank])
        idx = data.batch_indices(len(self.instance), c.train_batch_size, self.seed, step, self.rank, self.world)
        pixels = [data.make_pixels(self.instance, idx, c.resolution, c.center_crop, rng)]
        ids = [np.repeat(self.instance.input_ids, len(idx), axis=0)]
        if self.classes is not None:
            cidx = data.batch_indices(len(self.classes), c.train_batch_size, self.seed + 1, step, self.rank, self.world)
            pixels.append(data.make_pixels(self.classes, cidx, c.resolution, c.center_crop, rng))
            ids.append(np.repeat(self.classes.input_ids, len(cidx), axis=0))
        pixels, ids = np.concatenate(pixels), np.concatenate(ids)
        n = len(pixels)
        vae_noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        if c.offset_noise:
            noise += 0.1 * rng.standard_normal((n, self.latent_shape[0], 1, 1), dtype=np.float32)
        timesteps = rng.integers(0, self.num_timesteps, (n,)).astype(np.int32)
        mask = (ids != 0).astype(np.int32)
        return pixels, ids, mask, vae_noise, noise, timesteps


def latent_shape(components: Components, resolution: int) -> tuple[int, int, int]:
    """(channels, h, w) of the UNet's input for images of `resolution` pixels."""
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1) if components.vae is not None else 1
    return (components.unet.config.in_channels, resolution // factor, resolution // factor)


def total_steps(config: TrainConfig, num_images: int, world: int = 1) -> int:
    """max_train_steps, or the epochs' worth of full batches."""
    if config.max_train_steps:
        return config.max_train_steps
    per_epoch = math.ceil(num_images / (config.train_batch_size * world * config.gradient_accumulation_steps))
    return config.num_train_epochs * max(per_epoch, 1)


# --------------------------------------------------------------------------------- setup
def as_numpy(values) -> np.ndarray:
    """A float32 NumPy copy of a MindSpore tensor or array-like."""
    values = values.asnumpy() if hasattr(values, "asnumpy") else values
    return np.asarray(values, dtype=np.float32)


def freeze(net) -> None:
    """Stop a network from training (no gradients, eval mode)."""
    if net is None:
        return
    net.set_train(False)
    for p in net.get_parameters():
        p.requires_grad = False


def load_training_data(config: TrainConfig, components: Components):
    """Instance images (offline samples when no folder is given) and, with prior preservation, class images."""
    folder = config.instance_data_dir or data.sample_photos_dir()
    max_len = config.tokenizer_max_length
    instance = data.load_image_set(folder, config.instance_prompt, components.tokenizer, config.resolution, max_length=max_len)
    classes = None
    if config.with_prior_preservation:
        from ..prior import ensure_class_images

        ensure_class_images(config, components)
        classes = data.load_image_set(config.class_data_dir, config.class_prompt, components.tokenizer,
                                      config.resolution, limit=config.num_class_images, max_length=max_len)
    return instance, classes


def build_step(config: TrainConfig, components: Components, steps: int):
    """The compiled train step for these components and settings."""
    from .losses import DreamBoothLoss

    freeze(components.vae)
    if not config.train_text_encoder:
        freeze(components.text_encoder)
    components.unet.set_train(True)
    if config.gradient_checkpointing:
        components.unet.enable_gradient_checkpointing()
    params = list(components.unet.trainable_params())
    if config.train_text_encoder:
        components.text_encoder.set_train(True)
        params += list(components.text_encoder.trainable_params())
    sched = components.noise_scheduler
    loss_net = DreamBoothLoss(
        components.unet, components.vae, components.text_encoder, as_numpy(sched.alphas_cumprod),
        components.vae.config.scaling_factor if components.vae is not None else 1.0,
        sched.config.prediction_type, config.with_prior_preservation, config.prior_loss_weight,
        config.snr_gamma, config.train_text_encoder, config.text_encoder_use_attention_mask,
        config.class_labels_conditioning,
    )
    optimizer = make_optimizer(params, lr_schedule(config, steps), config)
    return make_train_step(loss_net, optimizer, config.max_grad_norm), optimizer


# ---------------------------------------------------------------------------------- loop
def train_dreambooth(config: TrainConfig, components: Components | None = None, progress: bool = True,
          on_step: Callable[[list], None] | None = None) -> TrainResult:
    """Fine-tune with DreamBooth as `config` says; returns the loss history and where the model went.

    on_step(history) is called after every step (a LivePlot, for example).
    """
    import mindspore as ms
    from tqdm.auto import tqdm

    config.validate()
    runtime.current()
    seed = 0 if config.seed is None else config.seed
    runtime.seed_everything(seed)
    components = components or load_components(config.pretrained_model_name_or_path, config.revision,
                                               config.variant, config.tokenizer_name)
    instance, classes = load_training_data(config, components)
    steps = total_steps(config, len(instance))
    step_fn, _ = build_step(config, components, steps)
    make_batch = BatchMaker(instance, classes, config, latent_shape(components, config.resolution),
                            components.noise_scheduler.config.num_train_timesteps, seed)
    result = TrainResult(Path(config.output_dir))
    bar = tqdm(range(steps), desc="training", disable=not progress, unit="step")
    try:
        for step in bar:
            inputs = [ms.Tensor(x) for x in make_batch(step)]
            loss = float(step_fn(*inputs).asnumpy())
            result.history.append(loss)
            result.steps = step + 1
            bar.set_postfix(loss=f"{loss:.4f}")
            if on_step is not None:
                on_step(result.history)
    except KeyboardInterrupt:
        result.interrupted = True
    finally:
        bar.close()
    save_pipeline(components, config, result.output_dir)
    return result


def save_pipeline(components: Components, config: TrainConfig, output_dir: Path) -> Path:
    """Save the (partly trained) pipeline in diffusers layout, loadable by StableDiffusionPipeline.from_pretrained."""
    from ..infer import pipeline_from_components

    pipe = pipeline_from_components(components)
    output_dir.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(str(output_dir))
    return output_dir

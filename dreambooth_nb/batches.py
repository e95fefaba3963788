"""Chapter 03 (batches): the images of each half with their prompt's tokens, and every step's batch, made
on the host from (seed, step) alone, so that resuming needs only the step number."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common.config import TrainConfig
from .common.tables import Table
from .data import check_images, crop, denormalize, load_rgb, normalize, resize_shorter
from .models import Components, tokenize_with_mask, vae_factor

@dataclass
class ImageSet:
    """Images resized once (shorter side = resolution) with the prompt's token ids."""

    images: list
    input_ids: np.ndarray  # (1, length): the same prompt for every image
    prompt: str
    attention_mask: np.ndarray  # (1, length): 1 on the prompt's tokens, 0 on padding (from the tokenizer)
    report: object = None  # data.ImageReport: what the folder check found (skipped, converted, upscaled files)

    def __len__(self) -> int:
        return len(self.images)


def load_image_set(folder, prompt: str, tokenizer, resolution: int, limit: int | None = None,
                   max_length: int | None = None) -> ImageSet:
    """Load every usable image of `folder` for training with `prompt` (same rules as check_images); the ImageSet
    carries the folder's check report, for the trainer to show when a file was skipped, converted or upscaled."""
    report = check_images(folder, resolution)
    paths = report.require_usable()[:limit]
    images = [resize_shorter(load_rgb(p), resolution) for p in paths]
    ids, mask = tokenize_with_mask(tokenizer, prompt, max_length)
    return ImageSet(images, ids, prompt, mask, report)


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled order of n examples in one epoch: a pure function of (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 0]).permutation(n)


def batch_indices(n: int, batch_size: int, seed: int, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """Example indices for one rank at one step; every batch is full (shapes never change).

    The global batch of a step is `batch_size * world` examples read from an endless stream of
    shuffled epochs; rank r takes its slice. Pure in (seed, step), so resuming needs only the step.
    """
    global_size = batch_size * world
    start = step * global_size
    positions = np.arange(start + rank * batch_size, start + (rank + 1) * batch_size)
    epochs, offsets = np.divmod(positions, n)
    return np.array([epoch_order(n, seed, int(e))[o] for e, o in zip(epochs, offsets)])


def make_pixels(images: ImageSet, indices: np.ndarray, resolution: int, center_crop: bool,
                rng: np.random.Generator) -> np.ndarray:
    """(B, 3, R, R) float32 pixels for the given examples, cropped as training does."""
    crops = [crop(images.images[i], resolution, None if center_crop else rng) for i in indices]
    return np.stack([normalize(c) for c in crops])


@dataclass(repr=False)
class Batch(Table):
    """One training step's inputs as the trainer makes them; with prior preservation the class half comes second."""

    pixels: np.ndarray
    input_ids: np.ndarray
    attention_mask: np.ndarray
    vae_noise: np.ndarray
    noise: np.ndarray
    timesteps: np.ndarray
    prompts: list
    halves: list  # "instance" or "class" for each row

    def inputs(self) -> tuple:
        """The arrays in the order DreamBoothLoss takes them."""
        return self.pixels, self.input_ids, self.attention_mask, self.vae_noise, self.noise, self.timesteps

    def titles(self) -> list[str]:
        """'row: half, t=timestep' for each row (picture titles)."""
        return [f"{i}: {half}, t={t}" for i, (half, t) in enumerate(zip(self.halves, self.timesteps))]

    def show(self, ncols: int | None = None):
        """The batch's pictures in order, titled with their half and timestep."""
        from .common.viz import show_images

        return show_images([denormalize(p) for p in self.pixels], titles=self.titles(), ncols=ncols or len(self.pixels))

    header = ("row", "half", "prompt", "timestep")

    @property
    def caption(self) -> str:
        return ", ".join(f"{name} {tuple(a.shape)}" for name, a in zip(
            ("pixels", "input_ids", "attention_mask", "vae_noise", "noise", "timesteps"), self.inputs()))

    def rows(self) -> list[tuple]:
        return [(i, half, prompt, int(t)) for i, (half, prompt, t) in
                enumerate(zip(self.halves, self.prompts, self.timesteps))]


@dataclass
class BatchMaker:
    """Makes micro-batch k's inputs on the host from (seed, k) alone: resuming needs only the step number."""

    instance: ImageSet
    classes: ImageSet | None
    config: TrainConfig
    latent_shape: tuple
    num_timesteps: int
    seed: int
    rank: int = 0
    world: int = 1
    embeddings: tuple | None = None  # pre-computed text embeddings (instance, class) replace the token ids

    def halves(self) -> list[tuple[ImageSet, int, np.ndarray | None]]:
        """(images, seed, pre-computed embedding) of the instance half and, with prior preservation, the class half."""
        embeds = self.embeddings or (None, None)
        out = [(self.instance, self.seed, embeds[0])]
        if self.classes is not None:
            out.append((self.classes, self.seed + 1, embeds[1]))
        return out

    def __call__(self, step: int) -> tuple[np.ndarray, ...]:
        c = self.config
        rng = np.random.default_rng([self.seed, step, 1, self.rank])
        pixels, ids, mask = self.examples(step, rng, c.center_crop)
        n = len(pixels)
        vae_noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        if c.offset_noise:
            noise += 0.1 * rng.standard_normal((n, self.latent_shape[0], 1, 1), dtype=np.float32)
        timesteps = rng.integers(0, self.num_timesteps, (n,)).astype(np.int32)
        return pixels, ids, mask, vae_noise, noise, timesteps

    def examples(self, step: int, rng: np.random.Generator, center_crop: bool) -> tuple[np.ndarray, ...]:
        """Pixels, token ids (or embeddings) and attention masks of step `step`'s examples, both halves."""
        pixels, ids, masks = [], [], []
        for images, seed, embedding in self.halves():
            idx = batch_indices(len(images), self.config.train_batch_size, seed, step, self.rank, self.world)
            pixels.append(make_pixels(images, idx, self.config.resolution, center_crop, rng))
            masks.append(np.repeat(images.attention_mask, len(idx), axis=0))
            ids.append(np.repeat(images.input_ids if embedding is None else embedding, len(idx), axis=0))
        return np.concatenate(pixels), np.concatenate(ids), np.concatenate(masks)

    def fixed(self) -> tuple[np.ndarray, ...]:
        """A batch that never changes (for the validation loss): step 0's pictures, centre-cropped, fixed noise,
        and in each half timesteps spread evenly over the schedule."""
        rng = np.random.default_rng([self.seed, 2**31 - 1, 7, self.rank])
        pixels, ids, mask = self.examples(0, rng, center_crop=True)
        n, half = len(pixels), self.config.train_batch_size
        vae_noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        noise = rng.standard_normal((n, *self.latent_shape), dtype=np.float32)
        spread = ((np.arange(half) + 0.5) / half * self.num_timesteps).astype(np.int32)
        return pixels, ids, mask, vae_noise, noise, np.tile(spread, n // half)


def latent_shape(components: Components, resolution: int) -> tuple[int, int, int]:
    """(channels, h, w) of the UNet's input for images of `resolution` pixels."""
    factor = vae_factor(components)
    return (components.unet.config.in_channels, resolution // factor, resolution // factor)

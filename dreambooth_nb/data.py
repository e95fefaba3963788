"""Chapter 01: the subject's photos, offline samples, transforms and the DreamBooth batches."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from .runtime import cache_dir
from .viz import save_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
SAMPLE_SUBJECT = "grace-hopper"
SAMPLE_PROMPT = "a photo of sks person"
SAMPLE_CLASS_PROMPT = "a photo of a person"


class DataError(ValueError):
    """A problem with the user's images that training cannot work around."""


# ------------------------------------------------------------------ offline subject photos
def sample_views(photo: Image.Image, n: int = 5, size: int = 256) -> list[Image.Image]:
    """n different 'photos' of one subject: crops, mirror and light changes of one picture."""
    w, h = photo.size
    boxes = [(0.10, 0.00, 0.90, 0.80), (0.00, 0.00, 1.00, 1.00), (0.20, 0.05, 0.85, 0.70),
             (0.05, 0.10, 0.95, 0.95), (0.15, 0.00, 0.80, 0.65), (0.00, 0.05, 0.90, 0.95)]
    views = []
    for i in range(n):
        x0, y0, x1, y1 = boxes[i % len(boxes)]
        view = photo.crop((int(x0 * w), int(y0 * h), int(x1 * w), int(y1 * h))).resize((size, size), Image.BICUBIC)
        if i % 2:
            view = ImageOps.mirror(view)
        view = ImageEnhance.Brightness(view).enhance(0.85 + 0.08 * i)
        views.append(view)
    return views


def sample_photos_dir(n: int = 5) -> Path:
    """A folder of n offline photos of one subject (Grace Hopper, from matplotlib's sample data)."""
    from matplotlib import cbook

    folder = cache_dir() / "data" / f"{SAMPLE_SUBJECT}-{n}"
    if len(list_images(folder)) == n:
        return folder
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photo = Image.open(f).convert("RGB")
    for i, view in enumerate(sample_views(photo, n)):
        save_atomic(view, folder / f"{SAMPLE_SUBJECT}-{i}.jpg")
    return folder


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files in a folder, sorted, hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image, apply its EXIF rotation, and convert it to 8-bit RGB."""
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                im = Image.fromarray((np.asarray(im, dtype=np.float64) / 257).clip(0, 255).astype(np.uint8))
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, "white")
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path} cannot be read as an image ({exc}). Remove it or replace it with a JPEG/PNG.") from exc


# -------------------------------------------------------------------------- transforms
def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is `size` (bilinear), keeping the aspect ratio."""
    w, h = image.size
    scale = size / min(w, h)
    return image.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BILINEAR)


def crop(image: Image.Image, size: int, rng: np.random.Generator | None = None) -> Image.Image:
    """A size x size crop: centred when rng is None, else at a random place."""
    w, h = image.size
    if rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return image.crop((left, top, left + size, top + size))


def normalize(image: Image.Image) -> np.ndarray:
    """CHW float32 in [-1, 1], what the VAE expects."""
    return (np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0)


def denormalize(pixels: np.ndarray) -> np.ndarray:
    """HWC float in [0, 1] from CHW in [-1, 1] (for display)."""
    return np.clip((np.asarray(pixels).transpose(1, 2, 0) + 1) / 2, 0, 1)


# ----------------------------------------------------------------------------- batches
@dataclass
class ImageSet:
    """Images resized once (shorter side = resolution) with the prompt's token ids."""

    images: list
    input_ids: np.ndarray  # (1, length): the same prompt for every image
    prompt: str

    def __len__(self) -> int:
        return len(self.images)


def load_image_set(folder, prompt: str, tokenizer, resolution: int, limit: int | None = None,
                   max_length: int | None = None) -> ImageSet:
    """Load every usable image of `folder` for training with `prompt`."""
    from .models import tokenize

    paths = list_images(folder)[:limit]
    if not paths:
        raise DataError(f"No images found in {folder}. Put JPEG or PNG photos of your subject there "
                        f"(3-5 are enough), or leave instance_data_dir empty to use the offline sample photos.")
    images = [resize_shorter(load_rgb(p), resolution) for p in paths]
    return ImageSet(images, tokenize(tokenizer, prompt, max_length), prompt)


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

"""Chapter 03: class images for prior preservation, made by the frozen model itself."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from . import data
from .viz import save_atomic


def content_name(image, index: int) -> str:
    """A file name holding the image's index and a hash of its pixels (class-0007-1a2b3c4d.png)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"class-{index:04d}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.png"


def missing_class_images(folder: str | Path, wanted: int) -> int:
    """How many class images still have to be generated."""
    return max(0, wanted - len(data.list_images(folder)))


def generate_class_images(pipe, folder: str | Path, prompt: str, wanted: int, batch_size: int = 4,
                          seed: int = 0, num_inference_steps: int = 25, progress: bool = True) -> list[Path]:
    """Make the class images that are missing in `folder`, each written atomically; resumes where it stopped."""
    from tqdm.auto import tqdm

    from .infer import generate

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    have = len(data.list_images(folder))
    written = []
    todo = range(have, wanted)
    with tqdm(total=len(todo), desc="class images", disable=not progress, unit="img") as bar:
        for start in range(have, wanted, batch_size):
            indices = list(range(start, min(start + batch_size, wanted)))
            images = generate(pipe, [prompt] * len(indices), [seed + i for i in indices],
                              num_inference_steps=num_inference_steps, batch_size=batch_size)
            for i, image in zip(indices, images):
                written.append(save_atomic(image, folder / content_name(image, i)))
            bar.update(len(indices))
    return written


def ensure_class_images(config, components) -> Path:
    """Fill config.class_data_dir up to config.num_class_images with images of config.class_prompt."""
    from .infer import pipeline_from_components, with_scheduler

    folder = Path(config.class_data_dir)
    if missing_class_images(folder, config.num_class_images):
        pipe = with_scheduler(pipeline_from_components(components), "DPMSolverMultistepScheduler")
        pipe.set_progress_bar_config(disable=True)
        generate_class_images(pipe, folder, config.class_prompt, config.num_class_images,
                              config.sample_batch_size, seed=config.seed or 0)
    return folder

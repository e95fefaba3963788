"""Chapter 03: class images for prior preservation, made by the frozen model itself, and the prior loss."""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from . import data, runtime
from .viz import save_atomic

CLASS_NAME = re.compile(r"^class-(\d{4,})-[0-9a-f]{8}\.png$")
INFERENCE_STEPS = 25  # denoising steps per class image
FAST_INFERENCE_STEPS = 10  # under DREAMBOOTH_NB_FAST=1 (DPM-Solver++ is usable from about 10)


def content_name(image, index: int) -> str:
    """A file name holding the image's index and a hash of its pixels (class-0007-1a2b3c4d.png)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"class-{index:04d}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.png"


def class_inference_steps() -> int:
    """Denoising steps for class images: fewer under DREAMBOOTH_NB_FAST=1."""
    return FAST_INFERENCE_STEPS if runtime.fast_profile() else INFERENCE_STEPS


def usable_class_images(folder: str | Path) -> list[Path]:
    """Class images in `folder` that training can read (the same checks as chapter 01)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return data.check_images(folder, resolution=0).usable


def missing_class_images(folder: str | Path, wanted: int) -> int:
    """How many class images still have to be generated."""
    return max(0, wanted - len(usable_class_images(folder)))


def indices_to_make(folder: str | Path, wanted: int) -> list[int]:
    """Seed indices of the missing images: the lowest ones no file in `folder` is named after yet."""
    taken = {int(m.group(1)) for p in Path(folder).glob("class-*.png") if (m := CLASS_NAME.match(p.name))}
    todo, index = [], 0
    for _ in range(missing_class_images(folder, wanted)):
        while index in taken:
            index += 1
        todo.append(index)
        index += 1
    return todo


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete half-written temporary files left by a process that was killed mid-write."""
    stale = [p for p in folder.glob(".class-*.tmp*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def generate_class_images(pipe, folder: str | Path, prompt: str, wanted: int, batch_size: int = 4,
                          seed: int = 0, num_inference_steps: int | None = None, progress: bool = True) -> list[Path]:
    """Make the class images missing in `folder` (up to `wanted`), batch by batch; returns the new files.

    Resumable: what is already there counts, and image i always comes from seed + i, so an
    interrupted run continues where it stopped. Each file is written atomically and named
    class-<index>-<hash>.png. Every batch has batch_size images (infer.generate pads a short one):
    a new shape would make GRAPH mode compile the sampling loop again.
    """
    from tqdm.auto import tqdm

    from . import infer

    runtime.current()  # GRAPH mode (compiled) unless setup() was asked otherwise
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(folder)
    todo = indices_to_make(folder, wanted)
    steps = num_inference_steps or class_inference_steps()
    pipe.set_progress_bar_config(disable=True)
    written = []
    with tqdm(total=len(todo), desc="class images", disable=not progress, unit="img") as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = infer.generate(pipe, [prompt] * len(chunk), [seed + i for i in chunk], num_inference_steps=steps,
                                    batch_size=batch_size)  # a short last batch is padded there
            for index, image in zip(chunk, images):
                written.append(save_atomic(image, folder / content_name(image, index)))
            bar.update(len(chunk))
    return written


def class_image_pipeline(components):
    """A sampling pipeline sharing the frozen model's networks, for class images."""
    from .infer import pipeline_from_components, with_scheduler

    pipe = with_scheduler(pipeline_from_components(components), "DPMSolverMultistepScheduler")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ensure_class_images(config, components, progress: bool = True) -> Path:
    """Fill config.class_data_dir up to config.num_class_images with images of config.class_prompt."""
    folder = Path(config.class_data_dir)
    missing = missing_class_images(folder, config.num_class_images)
    if missing:
        if progress:
            print(f"{folder}: {config.num_class_images - missing} class images there, making {missing} more")
        generate_class_images(class_image_pipeline(components), folder, config.class_prompt,
                              config.num_class_images, config.sample_batch_size, seed=config.seed or 0,
                              progress=progress)
    return folder


def class_images(config) -> list:
    """The class images training will use, as RGB pictures."""
    return [data.load_rgb(p) for p in usable_class_images(config.class_data_dir)[:config.num_class_images]]


# ---------------------------------------------------------------------- the prior loss
@dataclass(repr=False)
class LossTerms:
    """The two terms of the DreamBooth objective on one batch, and the trainer's total for comparison."""

    instance: float
    prior: float
    prior_loss_weight: float
    trainer_total: float | None = None

    @property
    def total(self) -> float:
        return self.instance + self.prior_loss_weight * self.prior

    def rows(self) -> list[tuple[str, str]]:
        rows = [("instance term (subject photos)", f"{self.instance:.4f}"),
                ("prior term (class images)", f"{self.prior:.4f}"),
                ("prior_loss_weight λ", f"{self.prior_loss_weight:g}"),
                ("instance + λ · prior", f"{self.total:.4f}")]
        if self.trainer_total is not None:
            rows.append(("DreamBoothLoss on the whole batch", f"{self.trainer_total:.4f}"))
        return rows

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return "\n".join(f"{k:<34} {v}" for k, v in self.rows())

    def _repr_html_(self) -> str:
        cells = "".join(f"<tr><td>{k}</td><td><code>{v}</code></td></tr>" for k, v in self.rows())
        return f"<table>{cells}</table>"


def prior_loss_terms(config, components, batch: "data.Batch", check: bool = True) -> LossTerms:
    """Instance and prior terms of one batch, each from the trainer's DreamBoothLoss on its half (compiled).

    The per-example denoising error does not depend on the other examples, so the loss of the
    instance half alone is the instance term and that of the class half the prior term. With
    check=True the trainer's own loss on the whole batch is computed too: it equals instance + λ·prior.
    """
    import mindspore as ms

    from .train.engine import loss_network

    if not config.with_prior_preservation or "class" not in batch.halves:
        raise ValueError("prior_loss_terms needs a batch made with with_prior_preservation=True "
                         "(config = db.sample_config(with_prior=True)).")
    runtime.current()
    half = len(batch.pixels) // 2
    plain = loss_network(config.replace(with_prior_preservation=False), components)
    terms = [float(plain(*[ms.Tensor(x[part]) for x in batch.inputs()]).asnumpy())
             for part in (slice(0, half), slice(half, None))]
    total = None
    if check:
        trainer = loss_network(config, components)
        total = float(trainer(*[ms.Tensor(x) for x in batch.inputs()]).asnumpy())
    return LossTerms(terms[0], terms[1], config.prior_loss_weight, total)

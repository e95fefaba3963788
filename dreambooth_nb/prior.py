"""Chapter 03: class images for prior preservation, made by the frozen model itself, and the prior loss."""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
from dataclasses import dataclass
from pathlib import Path

from . import data
from .batches import Batch, BatchMaker, latent_shape, load_image_set
from .common import defaults
from .common.config import TrainConfig
from .common.files import save_atomic
from .common.runtime import ensure_setup
from .common.world import World, barrier
from .common.tables import Table
from .models import Components
from .common.errors import InputError

CLASS_NAME = re.compile(r"^class-(\d{4,})-[0-9a-f]{8}\.png$")


def content_name(image, index: int) -> str:
    """A file name holding the image's index and a hash of its pixels (class-0007-1a2b3c4d.png)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f"class-{index:04d}-{hashlib.sha256(buffer.getvalue()).hexdigest()[:8]}.png"


def usable_class_images(folder: str | Path) -> list[Path]:
    """Class images in `folder` that training can read (the same checks as chapter 01)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return data.check_images(folder, resolution=0).usable


def missing_class_images(folder: str | Path, wanted: int) -> int:
    """How many class images still have to be generated (indices_to_make)."""
    return len(indices_to_make(folder, wanted))


def indices_to_make(folder: str | Path, wanted: int) -> list[int]:
    """Seed indices of the images to make. A folder of this package's images needs each index below `wanted` that no
    usable image is named after, however many others it holds: training on `wanted` of them then always uses images
    0 .. wanted-1 (a folder a longer run filled, with one deleted, would otherwise lend the next ones, and the run
    would train on other pictures). Where the folder also holds images named otherwise (brought by the user), every
    usable image counts and the lowest indices no file is named after make up the rest."""
    usable = usable_class_images(folder)
    named = {int(m.group(1)) for p in usable if (m := CLASS_NAME.match(p.name))}
    if len(named) == len(usable):
        return [index for index in range(wanted) if index not in named]
    taken = {int(m.group(1)) for p in Path(folder).glob("class-*.png") if (m := CLASS_NAME.match(p.name))}
    todo, index = [], 0
    for _ in range(max(0, wanted - len(usable))):
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
                          seed: int = defaults.SEED, num_inference_steps: int | None = None, progress: bool = True) -> list[Path]:
    """Make the class images missing in `folder` (up to `wanted`), batch by batch; returns the new files.

    Resumable: what is already there counts, and image i always comes from seed + i, so an
    interrupted run continues where it stopped. Each file is written atomically and named
    class-<index>-<hash>.png. Every batch has batch_size images (sampling.generate pads a short one):
    a new shape would make GRAPH mode compile the sampling loop again.
    """
    from .common.viz import progress_bar
    from .sampling import generate

    ensure_setup()  # GRAPH mode (compiled) unless setup() was asked otherwise
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(folder)
    todo = indices_to_make(folder, wanted)
    steps = num_inference_steps or defaults.inference_steps()
    pipe.set_progress_bar_config(disable=True)
    written = []
    with progress_bar(total=len(todo), desc="class images", unit="img", disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            images = generate(pipe, [prompt] * len(chunk), [seed + i for i in chunk], num_inference_steps=steps,
                                    batch_size=batch_size)  # a short last batch is padded there
            for index, image in zip(chunk, images):
                written.append(save_atomic(image, folder / content_name(image, index)))
            bar.update(len(chunk))
    return written


def ensure_class_images(config: TrainConfig, components: Components, progress: bool = True,
                        make_pipeline=None) -> Path:
    """Fill config.class_data_dir up to config.num_class_images with images of config.class_prompt.

    make_pipeline(components, scheduler) builds the sampler (Stable Diffusion's by default; SDXL brings its own).

    They are drawn in config.prior_generation_precision (fp16/bf16 on an NPU or GPU; fp32 on CPU, with a warning).
    """
    folder = Path(config.class_data_dir)
    missing = missing_class_images(folder, config.num_class_images)
    if missing:
        if progress:
            print(f"{folder}: {config.num_class_images - missing} class images there, making {missing} more")
        from .sampling import pipeline_from_components

        pipe = (make_pipeline or pipeline_from_components)(components, defaults.SAMPLER)
        with generation_precision(components, config.prior_generation_precision):
            generate_class_images(pipe, folder, config.class_prompt,
                                  config.num_class_images, config.sample_batch_size,
                                  seed=config.seed_used, progress=progress)
    return folder


@contextlib.contextmanager
def generation_precision(components: Components, precision: str | None):
    """Compute the networks in fp16/bf16 while class images are drawn (weights stay fp32), then back to fp32.

    On CPU, where MindSpore's half-precision kernels are missing or slow, the images are drawn in fp32 and one
    line says so.
    """
    import sys

    import mindspore as ms

    if precision in (None, "no", "fp32"):
        yield
        return
    if ensure_setup().device == "CPU":
        print(f"warning: --prior_generation_precision={precision} needs an Ascend NPU or a GPU; "
              f"class images are drawn in fp32 on CPU.", file=sys.stderr)
        yield
        return
    nets = [n for n in (components.unet, components.text_encoder, components.vae) if n is not None]
    for net in nets:
        net.to_float(ms.float16 if precision == "fp16" else ms.bfloat16)
    try:
        yield
    finally:
        for net in nets:
            net.to_float(ms.float32)


def class_images(config: TrainConfig) -> list:
    """The class images training will use, as RGB pictures."""
    return [data.load_rgb(p) for p in usable_class_images(config.class_data_dir)[:config.num_class_images]]


# ---------------------------------------------------------------------- the training data
def load_training_data(config: TrainConfig, components: Components, world: World = World(), make_pipeline=None):
    """Instance images (offline samples when no folder is given) and, with prior preservation, class images.

    Missing class images are made by rank 0 alone (with make_pipeline's sampler); the other workers wait, then read them.
    """
    from .common.assets import subject_photos_dir

    folder = config.instance_data_dir or subject_photos_dir()
    max_len = config.tokenizer_max_length
    instance = load_image_set(folder, config.instance_prompt, components.tokenizer, config.resolution, max_length=max_len)
    classes = None
    if config.with_prior_preservation:
        if world.main:
            ensure_class_images(config, components, make_pipeline=make_pipeline)
        barrier(world)
        classes = load_image_set(config.class_data_dir, config.class_prompt, components.tokenizer,
                                 config.resolution, limit=config.num_class_images, max_length=max_len)
    return instance, classes


def training_batch(config: TrainConfig, components: Components, step: int = 0) -> Batch:
    """Step `step`'s batch built by the trainer's own code (BatchMaker); makes class images if missing."""
    instance, classes = load_training_data(config, components)
    seed = config.seed_used
    maker = BatchMaker(instance, classes, config, latent_shape(components, config.resolution),
                       components.noise_scheduler.config.num_train_timesteps, seed)
    arrays = maker(step)
    n = config.train_batch_size
    halves = ["instance"] * n + (["class"] * n if classes is not None else [])
    prompts = [instance.prompt if h == "instance" else classes.prompt for h in halves]
    return Batch(*arrays, prompts=prompts, halves=halves)


# ---------------------------------------------------------------------- the prior loss
@dataclass(repr=False)
class LossTerms(Table):
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


def prior_loss_terms(config: TrainConfig, components: Components, batch: Batch, check: bool = True) -> LossTerms:
    """Instance and prior terms of one batch, each from the trainer's DreamBoothLoss on its half (compiled).

    The per-example denoising error does not depend on the other examples, so the loss of the
    instance half alone is the instance term and that of the class half the prior term. With
    check=True the trainer's own loss on the whole batch is computed too: it equals instance + λ·prior.
    """
    import mindspore as ms

    from .losses import loss_network

    if not config.with_prior_preservation or "class" not in batch.halves:
        raise InputError("prior_loss_terms needs a batch made with with_prior_preservation=True "
                         "(config = db.subject_config(with_prior=True)).")
    ensure_setup()
    half = len(batch.pixels) // 2
    plain = loss_network(config.replace(with_prior_preservation=False), components)
    terms = [float(plain(*[ms.Tensor(x[part]) for x in batch.inputs()])[0].asnumpy())
             for part in (slice(0, half), slice(half, None))]
    total = None
    if check:
        trainer = loss_network(config, components)
        total = float(trainer(*[ms.Tensor(x) for x in batch.inputs()])[0].asnumpy())
    return LossTerms(terms[0], terms[1], config.prior_loss_weight, total)

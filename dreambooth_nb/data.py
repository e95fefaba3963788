"""Chapter 01: the subject's photos (downloaded or offline), their checks, transforms and the DreamBooth batches."""

from __future__ import annotations

import hashlib
import html
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .runtime import cache_dir
from .toyworld import scenes
from .viz import save_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}
# The default subject: a purple star with yellow stripes that the toy-world model never saw (chapter 06).
SAMPLE_SUBJECT = "sks-star"
SAMPLE_PROMPT = scenes.SUBJECT_PROMPT  # "a photo of sks star"
SAMPLE_CLASS_PROMPT = scenes.SUBJECT_CLASS_PROMPT  # "a photo of a star"
EXAMPLE_DATASET = "diffusers/dog-example"  # the photos of the DreamBooth guides (5 photos of a dog)
OFFLINE_FLAGS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "DREAMBOOTH_NB_OFFLINE")
HUB_ADDRESS = ("huggingface.co", 443)
EXIF_ORIENTATION = 0x0112
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class DataError(ValueError):
    """A problem with the user's images that training cannot work around."""


# ------------------------------------------------------------------ offline subject photos
def sample_photo() -> Image.Image:
    """A real photo for the preprocessing demos: Grace Hopper, from matplotlib's sample data."""
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return Image.open(f).convert("RGB")


def sample_photos_dir(n: int = 5) -> Path:
    """A folder of n offline photos of the default subject, the toy world's striped star (PNGs, written once)."""
    folder = cache_dir() / "data" / f"{SAMPLE_SUBJECT}-{n}"
    for i, image in enumerate(scenes.subject_images(n)):
        if not (folder / f"{SAMPLE_SUBJECT}-{i}.png").is_file():
            save_atomic(image, folder / f"{SAMPLE_SUBJECT}-{i}.png")
    return folder


# ------------------------------------------------------------------ photos from the hub
def offline_reason(offline: bool | None = None, timeout: float = 3.0) -> str | None:
    """Why the hub cannot be used now (a flag, or no answer from huggingface.co), or None when it can."""
    if offline:
        return "offline=True was passed"
    if offline is None:
        for name in OFFLINE_FLAGS:
            if os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}:
                return f"{name}={os.environ[name]} is set"
        if not hub_reachable(timeout):
            return f"{HUB_ADDRESS[0]}:{HUB_ADDRESS[1]} could not be reached (probe of {timeout:g} s)"
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to huggingface.co:443 opens within `timeout` seconds (name lookup included)."""
    import socket

    result = []

    def probe():
        try:
            socket.create_connection(HUB_ADDRESS, timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])


def download_dataset(repo_id: str, folder: Path) -> Path:
    """Download a hub dataset repo into `folder` (staged, then moved into place: never half there)."""
    import tempfile

    from huggingface_hub import snapshot_download

    from .models import replace_dir

    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        staging = Path(tmp) / "photos"
        snapshot_download(repo_id, repo_type="dataset", local_dir=str(staging), ignore_patterns=".gitattributes")
        replace_dir(staging, folder)
    return folder


def get_instance_photos(source: str | os.PathLike | None = EXAMPLE_DATASET, offline: bool | None = None) -> Path:
    """The folder of the subject's photos: a local folder, a hub dataset (downloaded once), or the offline samples.

    source: a folder of your photos, a hub dataset id (default: diffusers/dog-example), or None for the
    offline sample photos. offline: True skips the hub, False skips the reachability probe, None decides
    from HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / DREAMBOOTH_NB_OFFLINE and a 3 s probe of huggingface.co.
    When the hub cannot be used the offline sample photos are returned, and one sentence says why.
    """
    if source is None:
        return sample_photos_dir()
    path = Path(source).expanduser()
    if path.exists() or not HUB_ID.match(str(source)):
        return existing_folder(path)
    folder = cache_dir() / "data" / str(source).replace("/", "--")
    if list_images(folder):
        return folder
    reason = offline_reason(offline)
    if reason is None:
        try:
            return download_dataset(str(source), folder)
        except Exception as exc:  # the hub is too varied to list: any failure falls back the same way
            if type(exc).__name__ in {"RepositoryNotFoundError", "GatedRepoError"}:
                raise DataError(f"{source} is neither a local folder nor a dataset on the Hugging Face hub "
                                f"({type(exc).__name__}). Check the name, or pass the folder of your photos.") from exc
            reason = f"the download failed ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    print(f"Cannot download {source} because {reason}, "
          f"so the offline sample photos (the toy world's striped star) are used instead.")
    return sample_photos_dir()


def existing_folder(path: str | os.PathLike) -> Path:
    """`path` as a Path when it is a folder; a DataError saying what to do otherwise."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"The photo folder {path} does not exist. Create it and put 3-5 JPEG or PNG photos of "
                        f"your subject in it, or leave instance_data_dir empty to use the offline sample photos.")
    if not path.is_dir():
        raise DataError(f"{path} is a file, not a folder. Point instance_data_dir (or source) at the folder "
                        f"that holds the photos.")
    return path


# ------------------------------------------------------------------------- reading images
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
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, "white")
                im = Image.alpha_composite(background, im)
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path} cannot be read as an image ({exc}). Remove it or replace it with a JPEG/PNG.") from exc


# ------------------------------------------------------------------------ checking a folder
CONVERSIONS = {
    "CMYK": "CMYK (print colours) converted to RGB",
    "RGBA": "transparency filled with white", "LA": "grayscale with transparency: filled with white, made RGB",
    "P": "palette image converted to RGB", "PA": "palette image with transparency converted to RGB",
    "L": "grayscale: copied into 3 channels", "1": "black-and-white: converted to RGB",
    "I;16": "16-bit: scaled to 8 bits", "I;16B": "16-bit: scaled to 8 bits", "I;16L": "16-bit: scaled to 8 bits",
    "I": "32-bit integer: scaled to 8 bits", "F": "floating point: converted to 8-bit RGB",
    "YCbCr": "YCbCr converted to RGB", "LAB": "Lab converted to RGB", "HSV": "HSV converted to RGB",
}


@dataclass
class ImageCheck:
    """What the check found for one file: its size and mode on disk, a verdict, and why."""

    path: Path
    verdict: str  # "ok", "converted", "warning" or "skipped"
    size: tuple | None = None
    mode: str | None = None
    notes: list = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return self.verdict != "skipped"

    def row(self) -> tuple[str, str, str, str, str]:
        size = f"{self.size[0]}x{self.size[1]}" if self.size else "-"
        return self.path.name, size, self.mode or "-", self.verdict, "; ".join(self.notes)


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (finds exact duplicates)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_file(path: Path, resolution: int) -> ImageCheck:
    """Check one file: readable image? converted? rotated? big enough? (duplicates are found per folder)."""
    if path.name.startswith("."):
        return ImageCheck(path, "skipped", notes=["hidden file"])
    if path.is_dir():
        return ImageCheck(path, "skipped", notes=["a folder: photos must sit directly in the folder"])
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return ImageCheck(path, "skipped", notes=[f"not an image file ({path.suffix or 'no extension'})"])
    try:
        with Image.open(path) as im:
            mode, orientation = im.mode, im.getexif().get(EXIF_ORIENTATION, 1)
        size = load_rgb(path).size  # decodes the whole file: truncated files fail here
    except Image.UnidentifiedImageError:
        return ImageCheck(path, "skipped", notes=[f"unreadable: not a valid {path.suffix.lstrip('.').upper()} file"])
    except (OSError, DataError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = str(exc.__cause__ or exc).replace(str(path), path.name).splitlines()[0][:80]
        return ImageCheck(path, "skipped", notes=[f"unreadable: {reason}"])
    check = ImageCheck(path, "ok", size, mode)
    if mode != "RGB":
        check.notes.append(CONVERSIONS.get(mode, f"{mode} converted to RGB"))
        check.verdict = "converted"
    if orientation not in (1, None):
        check.notes.append(f"rotated upright from its EXIF orientation ({orientation})")
        check.verdict = "converted"
    if min(size) < resolution:
        check.notes.append(f"smaller than {resolution} px: it will be upscaled and look blurry")
        check.verdict = "warning"
    return check


@dataclass(repr=False)
class ImageReport:
    """The check of every file in a folder, shown as a table; `usable` lists the files training will read."""

    folder: Path
    resolution: int
    checks: list

    @property
    def usable(self) -> list[Path]:
        return [c.path for c in self.checks if c.usable]

    def count(self, verdict: str) -> int:
        return sum(c.verdict == verdict for c in self.checks)

    def summary(self) -> str:
        """One line: the folder, how many files are usable, and the count of each verdict."""
        parts = [f"{self.count(v)} {v}" for v in ("ok", "converted", "warning", "skipped") if self.count(v)]
        return f"{self.folder}: {len(self.usable)} usable of {len(self.checks)} files ({', '.join(parts) or 'empty'})"

    def require_usable(self) -> list[Path]:
        """The usable files, or a DataError naming the folder, what was skipped, and what to do."""
        if self.usable:
            return self.usable
        skipped = [f"{c.path.name} ({c.notes[0]})" for c in self.checks if c.notes and c.notes[0] != "hidden file"]
        found = f"its files were skipped: {', '.join(skipped[:6])}" if skipped else "it holds no image files"
        raise DataError(f"No usable image in {self.folder}: {found}. Put 3-5 JPEG or PNG photos of your subject "
                        f"there, or leave instance_data_dir empty to use the offline sample photos.")

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        rows = [("file", "size", "mode", "verdict", "notes")] + [c.row() for c in self.checks]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        return "\n".join([self.summary(), *lines])

    def _repr_html_(self) -> str:
        colours = {"ok": "#2e7d32", "converted": "#1565c0", "warning": "#ef6c00", "skipped": "#c62828"}
        head = "".join(f"<th>{h}</th>" for h in ("file", "size", "mode", "verdict", "notes"))
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in r[:3])
            + f"<td style='color:{colours[r[3]]}'><b>{r[3]}</b></td><td>{html.escape(r[4])}</td></tr>"
            for r in (c.row() for c in self.checks))
        return f"<p>{html.escape(self.summary())}</p><table><tr>{head}</tr>{body}</table>"


def check_images(folder: str | os.PathLike, resolution: int = 512) -> ImageReport:
    """Check every file of a folder before training, changing nothing in it; returns the report table."""
    folder = existing_folder(folder)
    checks, seen = [], {}
    for path in sorted(folder.iterdir()):
        check = check_file(path, resolution)
        if check.usable:
            digest = file_hash(path)
            if digest in seen:
                check.notes.append(f"same content as {seen[digest].name}: it counts twice; remove one copy")
                check.verdict = "warning"
            seen.setdefault(digest, path)
        checks.append(check)
    return ImageReport(folder, resolution, checks)


def make_problem_examples(folder: str | os.PathLike, photo: Image.Image | None = None) -> Path:
    """Write a folder with one example of each problem check_images handles (for chapter 01's demo)."""
    import io

    folder = Path(folder)
    photo = sample_photo() if photo is None else photo
    good = photo.resize((128, 128))
    save_atomic(good, folder / "good.jpg")
    save_atomic(good, folder / "same-as-good.jpg")
    save_atomic(good.convert("CMYK"), folder / "cmyk.jpg")
    cutout = good.convert("RGBA")
    cutout.putalpha(ImageOps.invert(Image.radial_gradient("L").resize(good.size)).point(lambda v: 255 * (v > 100)))
    save_atomic(cutout, folder / "rgba.png")
    save_atomic(good.convert("L"), folder / "grayscale.png")
    save_atomic(Image.fromarray(np.asarray(good.convert("L"), dtype=np.uint16) * 257), folder / "16-bit.png")
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90° clockwise to view"
    good.crop((0, 16, 128, 112)).transpose(Image.ROTATE_90).save(folder / "phone-rotated.jpg", exif=exif)
    save_atomic(good.resize((16, 16)), folder / "tiny.png")  # below every model's resolution
    buffer = io.BytesIO()
    good.save(buffer, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (folder / "notes.txt").write_text("not a photo\n", encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return folder


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


def transform_steps(image: Image.Image, resolution: int, seed: int = 0, random_crops: int = 2) -> dict:
    """{name: picture} for each training transform: resize (shorter side), centre crop, a few random crops."""
    resized = resize_shorter(image, resolution)
    rng = np.random.default_rng(seed)
    steps = {"original": image, "resized": resized, "center crop": crop(resized, resolution)}
    for i in range(random_crops):
        steps[f"random crop {i + 1}"] = crop(resized, resolution, rng)
    return steps


# ----------------------------------------------------------------------------- batches
@dataclass
class ImageSet:
    """Images resized once (shorter side = resolution) with the prompt's token ids."""

    images: list
    input_ids: np.ndarray  # (1, length): the same prompt for every image
    prompt: str
    attention_mask: np.ndarray  # (1, length): 1 on the prompt's tokens, 0 on padding (from the tokenizer)

    def __len__(self) -> int:
        return len(self.images)


def load_image_set(folder, prompt: str, tokenizer, resolution: int, limit: int | None = None,
                   max_length: int | None = None) -> ImageSet:
    """Load every usable image of `folder` for training with `prompt` (same rules as check_images)."""
    import warnings

    from .models import tokenize_with_mask

    report = check_images(folder, resolution)
    paths = report.require_usable()[:limit]
    skipped = [c.path.name for c in report.checks if not c.usable and not c.path.name.startswith(".")]
    if skipped:
        warnings.warn(f"{report.summary()}; skipped {', '.join(skipped[:5])}. "
                      f"Run db.check_images({str(report.folder)!r}) to see why.", stacklevel=2)
    images = [resize_shorter(load_rgb(p), resolution) for p in paths]
    ids, mask = tokenize_with_mask(tokenizer, prompt, max_length)
    return ImageSet(images, ids, prompt, mask)


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


def sample_config(with_prior: bool = True, **changes):
    """TrainConfig for the offline sample subject on the embedded model (short under DREAMBOOTH_NB_FAST=1).

    The resolution is the model's own. Class images are kept per model (cache_dir()/data/class-star-<model>):
    another model's prior is another set, and so is a new version of the committed toy-world model (the
    digest of its UNet weights is part of the name).
    """
    from .models import DEFAULT_MODEL, TOY_MODEL, native_resolution, toy_world_path
    from .train.config import TrainConfig, fast

    model = str(changes.get("pretrained_model_name_or_path", DEFAULT_MODEL))
    slug = re.sub(r"[^\w.]+", "-", model).strip("-")
    if model == TOY_MODEL:
        slug += "-" + file_hash(next((toy_world_path() / "unet").glob("*.safetensors")))[:8]
    noun = SAMPLE_CLASS_PROMPT.split()[-1]
    config = TrainConfig(
        pretrained_model_name_or_path=model, instance_data_dir=str(sample_photos_dir()),
        instance_prompt=SAMPLE_PROMPT, class_prompt=SAMPLE_CLASS_PROMPT, with_prior_preservation=with_prior,
        class_data_dir=str(cache_dir() / "data" / f"class-{noun}-{slug}"), num_class_images=16,
        resolution=native_resolution(model), center_crop=True, train_batch_size=2, sample_batch_size=4, seed=0,
        output_dir=str(Path("outputs") / "sample-subject"), report_to="none",
    )
    return fast(config.replace(**changes))


@dataclass(repr=False)
class Batch:
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
        from .viz import show_images

        return show_images([denormalize(p) for p in self.pixels], titles=self.titles(), ncols=ncols or len(self.pixels))

    def rows(self) -> list[tuple]:
        return [(i, half, prompt, int(t)) for i, (half, prompt, t) in
                enumerate(zip(self.halves, self.prompts, self.timesteps))]

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        shapes = ", ".join(f"{name} {tuple(a.shape)}" for name, a in zip(
            ("pixels", "input_ids", "attention_mask", "vae_noise", "noise", "timesteps"), self.inputs()))
        return "\n".join([shapes] + [f"{i}  {half:<8}  t={t:<4}  {p}" for i, half, p, t in self.rows()])

    def _repr_html_(self) -> str:
        head = "<tr><th>row</th><th>half</th><th>prompt</th><th>timestep</th></tr>"
        body = "".join(f"<tr><td>{i}</td><td>{h}</td><td>{html.escape(p)}</td><td>{t}</td></tr>"
                       for i, h, p, t in self.rows())
        return f"<p>pixels {tuple(self.pixels.shape)}, noise {tuple(self.noise.shape)}</p><table>{head}{body}</table>"


def training_batch(config, components, step: int = 0) -> Batch:
    """Step `step`'s batch built by the trainer's own code (engine.BatchMaker); makes class images if missing."""
    from .train.engine import BatchMaker, latent_shape, load_training_data

    instance, classes = load_training_data(config, components)
    seed = 0 if config.seed is None else config.seed
    maker = BatchMaker(instance, classes, config, latent_shape(components, config.resolution),
                       components.noise_scheduler.config.num_train_timesteps, seed)
    arrays = maker(step)
    n = config.train_batch_size
    halves = ["instance"] * n + (["class"] * n if classes is not None else [])
    prompts = [instance.prompt if h == "instance" else classes.prompt for h in halves]
    return Batch(*arrays, prompts=prompts, halves=halves)

"""Chapter 01: the subject's photos (downloaded or offline), their checks, and the training transforms."""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .common.assets import portrait_photo, subject_photos_dir
from .common.errors import InputError, UserError
from .common.files import cache_dir, file_hash, replace_dir, save_atomic
from .common.hub import is_hub_id, offline_reason
from .common.tables import Table

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
EXAMPLE_DATASET = "diffusers/dog-example"  # the photos of the DreamBooth guides (5 photos of a dog)
EXIF_ORIENTATION = 0x0112


class DataError(UserError, ValueError):
    """A problem with the user's images that training cannot work around."""


# ------------------------------------------------------------------ photos from the hub
def download_dataset(repo_id: str, folder: Path) -> Path:
    """Download a hub dataset repo into `folder` (staged, then moved into place: never half there)."""
    import tempfile

    from huggingface_hub import snapshot_download

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
        return subject_photos_dir()
    path = Path(source).expanduser()
    if path.exists() or not is_hub_id(str(source)):
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
    return subject_photos_dir()


def describe_photos(folder: str | os.PathLike) -> str:
    """One sentence saying which photos a folder holds: the offline sample subject, a hub dataset, or your own."""
    folder = Path(folder)
    count = len(list_images(folder))
    if folder.parent == subject_photos_dir().parent and folder.name.startswith("sks-star"):
        return (f"{count} offline sample photos of the toy world's subject, a purple star with yellow stripes "
                f"(the toy-world model never saw it), in {folder}.")
    if folder.parent == cache_dir() / "data" and "--" in folder.name:
        return f"{count} photos downloaded from the hub dataset {folder.name.replace('--', '/', 1)}, in {folder}."
    return f"{count} photos from your folder {folder}."


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
class ImageReport(Table):
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

    header = ("file", "size", "mode", "verdict", "notes")

    @property
    def caption(self) -> str:
        return self.summary()

    def rows(self) -> list[tuple]:
        return [c.row() for c in self.checks]

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
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 0:
        raise InputError(f"resolution={resolution!r}: give the training size in pixels as a whole number, e.g. 512 "
                         f"(or 32 for the toy-world model; 0 checks no size).")
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
    photo = portrait_photo() if photo is None else photo
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
    return crop_with_corner(image, size, rng)[0]


def crop_with_corner(image: Image.Image, size: int, rng: np.random.Generator | None = None) -> tuple[Image.Image, tuple]:
    """crop() and where the crop's top-left corner lies in the image, (top, left) (SDXL is told it)."""
    w, h = image.size
    if rng is None:
        left, top = (w - size) // 2, (h - size) // 2
    else:
        left, top = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
    return image.crop((left, top, left + size, top + size)), (top, left)


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

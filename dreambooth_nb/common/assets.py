"""The models and photos the package ships or builds offline, and how a model name becomes a folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import defaults, scenes
from .files import cache_dir, file_hash, save_atomic
from .errors import MissingFileError

SUPPORTED_TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")
SUBJECT_NAME = "sks-star"  # folder name of the offline subject photos
PORTRAIT_FILE = "grace_hopper.jpg"  # matplotlib's sample photo, for chapter 01's preprocessing demo


# ---------------------------------------------------------------------------- embedded models
def assets_dir() -> Path:
    """The package folder holding committed assets (assets/)."""
    return Path(__file__).resolve().parent.parent / "assets"


def toy_world_dir() -> Path:
    """The committed toy-world folder: model/, judge.npz, MODEL_CARD.md."""
    return assets_dir() / "toyworld"


def results_dir() -> Path:
    """Where the toy world's committed results live (tables, JSON, figures): assets/toyworld/results."""
    return toy_world_dir() / "results"


def show_committed(name: str = "sweep"):
    """A committed figure of the toy world's results (for example 'sweep', 'experiments', 'schedule-before'), as a
    notebook image."""
    from IPython.display import Image

    return Image(filename=str(results_dir() / f"{name}.png"))


def toy_model_path() -> Path:
    """The committed toy-world Stable Diffusion (diffusers layout)."""
    path = toy_world_dir() / "model"
    if not (path / "model_index.json").is_file():
        raise MissingFileError(
            f"The toy-world model is missing from {path}. Reinstall dreambooth-nb, or rebuild it with the "
            f"commands in {toy_world_dir() / 'MODEL_CARD.md'} (a few CPU hours).")
    return path


def toy_xl_model_path() -> Path:
    """The committed toy-world SDXL (diffusers layout), chapter 09's model."""
    path = toy_world_dir() / "xl" / "model"
    if not (path / "model_index.json").is_file():
        raise MissingFileError(
            f"The toy-world SDXL is not in {path} (the package ships it): reinstall dreambooth-nb, rebuild it with the "
            f"commands of dreambooth_nb/assets/toyworld/xl/MODEL_CARD.md, or give --pretrained_model_name_or_path an "
            f"SDXL hub id or folder (e.g. stabilityai/stable-diffusion-xl-base-1.0).")
    return path


def tiny_model_path(rebuild: bool = False) -> Path:
    """The cached tiny random model, built on first use (a few seconds, no network)."""
    from .tiny_model import TINY_SEED, build_tiny_pipeline

    path = cache_dir() / "models" / f"{defaults.TINY_MODEL}-seed{TINY_SEED}"
    if rebuild or not is_diffusers_folder(path):
        build_tiny_pipeline(path)
    return path


EMBEDDED_PATHS = {defaults.TOY_MODEL: toy_model_path, defaults.TINY_MODEL: tiny_model_path,
                  defaults.TOY_XL_MODEL: toy_xl_model_path}


def is_diffusers_folder(path: Path) -> bool:
    """True when `path` holds a saved pipeline (model_index.json and a unet/ folder)."""
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """A local folder for embedded names, folders (mindone's or PyTorch's safetensors) and single .safetensors files
    (converted once into a cached folder); a hub id is returned unchanged for from_pretrained."""
    name = str(name_or_path or defaults.DEFAULT_MODEL)
    if name in EMBEDDED_PATHS:
        return str(EMBEDDED_PATHS[name]())
    path = Path(name).expanduser()
    if path.exists():
        from .formats import detect_layout, importable_model

        if path.is_file() or detect_layout(path) in ("lora", "diffusers-bin"):
            return str(importable_model(path))  # a single file becomes a cached folder; the others say what to do
        if not path.is_dir() or not (path / "unet").is_dir():
            raise MissingFileError(
                f"{path} is not a Stable Diffusion folder in diffusers layout (no unet/ inside). "
                f"Pass a folder saved with save_pretrained, a hub id such as "
                f"'stable-diffusion-v1-5/stable-diffusion-v1-5', or {defaults.DEFAULT_MODEL!r}.")
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise MissingFileError(f"Model folder {name} does not exist. Check the path, or use {defaults.DEFAULT_MODEL!r}.")
    return name  # a hub id: from_pretrained downloads it (or reads the hub cache)


def read_subfolder_config(model: str, subfolder: str, revision: str | None = None) -> dict | None:
    """config.json of a component from a local folder or the hub cache; None when it is not there."""
    local = Path(model) / subfolder / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    if Path(model).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, f"{subfolder}/config.json", revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def downsampling_factor(vae_config) -> int:
    """Pixels per latent position per side, from a VAE config (each block after the first halves the size)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config else 1


def native_resolution(name_or_path: str | os.PathLike | None = None, fallback: int = 512) -> int:
    """The image size a model was built for, read from its config files (fallback when they are not local)."""
    from .tiny_model import TINY_RESOLUTION

    if str(name_or_path or defaults.DEFAULT_MODEL) == defaults.TINY_MODEL:
        return TINY_RESOLUTION  # known without building it (building runs MindSpore before setup())
    folder = resolve_model(name_or_path)
    unet, vae = read_subfolder_config(folder, "unet"), read_subfolder_config(folder, "vae")
    if not unet or "sample_size" not in unet:
        return fallback
    return int(unet["sample_size"]) * downsampling_factor(vae)


def base_model_of(model: str | os.PathLike | None) -> str:
    """The model a training output (or checkpoint) folder was trained from, followed back; the name itself otherwise."""
    name = str(model or defaults.DEFAULT_MODEL)
    for _ in range(8):  # a fine-tuned model may itself be fine-tuned from another
        settings = training_settings(name)
        if not settings.get("pretrained_model_name_or_path"):
            return name
        name = str(settings["pretrained_model_name_or_path"])
    return name


def training_settings(folder: str | os.PathLike) -> dict:
    """The TrainConfig values a training run saved next to its model (train_config.json, or a checkpoint's state.json)."""
    folder = Path(folder)
    for path, key in ((folder / "train_config.json", None), (folder / "state.json", "config")):
        if path.is_file():
            values = json.loads(path.read_text(encoding="utf-8"))
            return values[key] if key else values
    return {}


def is_toy_model(model: str | os.PathLike | None) -> bool:
    """True for the committed toy-world models (SD and SDXL), by name or by folder."""
    name = str(model or defaults.DEFAULT_MODEL)
    if name in (defaults.TOY_MODEL, defaults.TOY_XL_MODEL):
        return True
    try:
        return Path(name).resolve() in {(toy_world_dir() / "model").resolve(), (toy_world_dir() / "xl" / "model").resolve()}
    except OSError:
        return False


def guidance_for(model: str | os.PathLike | None) -> float:
    """The classifier-free guidance scale to sample `model` with: the toy world's own, else the reference's 7.5.

    `model` is an embedded name, a folder (a training output or checkpoint counts as the model it was
    trained from) or a hub id.
    """
    return defaults.TOY_GUIDANCE if is_toy_model(base_model_of(model)) else defaults.REFERENCE_GUIDANCE


def toy_model_digest() -> str:
    """8 hex digits naming the committed toy-world weights (class images made by another version are another set)."""
    return file_hash(next((toy_model_path() / "unet").glob("*.safetensors")))[:8]


# ---------------------------------------------------------------------------- offline photos
def portrait_photo():
    """A real photo for the preprocessing demos: Grace Hopper, from matplotlib's sample data."""
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data(PORTRAIT_FILE) as f:
        return Image.open(f).convert("RGB")


def subject_photos_dir(n: int = 5) -> Path:
    """A folder of n offline photos of the default subject, the toy world's striped star (PNGs, written once)."""
    folder = cache_dir() / "data" / f"{SUBJECT_NAME}-{n}-v{scenes.VERSION}"
    for i, image in enumerate(scenes.subject_images(n)):
        if not (folder / f"{SUBJECT_NAME}-{i}.png").is_file():
            save_atomic(image, folder / f"{SUBJECT_NAME}-{i}.png")
    return folder


def toy_pretraining_captions() -> list[str]:
    """Every caption the committed toy-world model was pretrained on (regenerated from its summary's seed)."""
    summary = json.loads((toy_world_dir() / "summary.json").read_text(encoding="utf-8"))
    args = summary["args"]
    return scenes.captions(args["images"], args["seed"], named=args.get("named", 0.0))  # older models: no names

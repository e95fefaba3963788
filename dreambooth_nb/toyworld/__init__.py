"""Chapter 06: the toy world, a pretrained Stable Diffusion of coloured shapes where DreamBooth's effects show in minutes."""

from __future__ import annotations

from pathlib import Path


def assets_dir() -> Path:
    """The package folder holding the committed toy-world model, judge and model card."""
    return Path(__file__).resolve().parent.parent / "assets" / "toyworld"


def toy_model_path() -> Path:
    """The committed toy-world Stable Diffusion (diffusers layout), for resolve_model('toy-world')."""
    path = assets_dir() / "model"
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"The toy-world model is missing from {path}. Reinstall dreambooth-nb, or rebuild it with "
            f"`python -m dreambooth_nb.toyworld.pretrain --install` (about 40 minutes on a 2-core CPU)."
        )
    return path

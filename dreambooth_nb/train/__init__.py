"""Chapter 04: DreamBooth training. `python -m dreambooth_nb.train --help` lists the flags.

Importing this package loads nothing heavy: `train_dreambooth` and friends come from .engine on first use.
"""

from __future__ import annotations

import importlib

__all__ = ["TrainResult", "stop_after", "train_dreambooth"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module(".engine", __name__), name)
    raise AttributeError(f"module 'dreambooth_nb.train' has no attribute {name!r}")

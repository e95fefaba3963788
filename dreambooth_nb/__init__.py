"""dreambooth-nb: DreamBooth with MindSpore + mindone, one chapter per module.

    import dreambooth_nb as db
    db.setup()

Importing this package loads nothing heavy and changes no global state; names are fetched from
their chapter's module on first use (db.show_images comes from dreambooth_nb.viz, and so on).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (one obvious place for each thing)
_EXPORTS = {
    "setup": "runtime", "cache_dir": "runtime", "fast_profile": "runtime", "speed_check": "runtime",
    "sample_photos_dir": "data", "list_images": "data", "load_rgb": "data", "DataError": "data",
    "load_components": "models", "tiny_model_path": "models", "resolve_model": "models",
    "tokenize": "models", "DEFAULT_MODEL": "models",
    "ensure_class_images": "prior", "generate_class_images": "prior",
    "TrainConfig": "train", "ConfigError": "train", "train_dreambooth": "train", "TrainResult": "train",
    "load_pipeline": "infer", "generate": "infer", "save_images": "infer", "with_scheduler": "infer",
    "show_images": "viz", "image_grid": "viz", "plot_loss": "viz", "LivePlot": "viz",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dreambooth_nb' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

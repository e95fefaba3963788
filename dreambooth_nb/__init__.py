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
    "get_instance_photos": "data", "check_images": "data", "make_problem_examples": "data",
    "transform_steps": "data", "normalize": "data", "sample_photo": "data", "sample_config": "data", "training_batch": "data",
    "load_components": "models", "tiny_model_path": "models", "resolve_model": "models",
    "tokenize": "models", "DEFAULT_MODEL": "models",
    "prompt_tokens": "models", "encode_prompt": "models", "vae_round_trip": "models",
    "noised_versions": "models", "plot_noise_schedule": "models",
    "ensure_class_images": "prior", "generate_class_images": "prior", "class_images": "prior",
    "prior_loss_terms": "prior",
    "TrainConfig": "train", "ConfigError": "train", "train_dreambooth": "train", "TrainResult": "train",
    "stop_after": "train", "tutorial_config": "train",
    "list_checkpoints": "train.checkpoint", "weight_digest": "train.checkpoint",
    "read_metrics": "train.report", "plot_lr_schedule": "train.report",
    "run_msrun": "train.distributed", "msrun_command": "train.distributed", "msrun_shell": "train.distributed",
    "load_pipeline": "infer", "load_weights": "infer", "generate": "infer", "save_images": "infer",
    "with_scheduler": "infer", "compare_models": "infer", "trained_model": "infer", "training_settings": "infer",
    "inference_steps": "infer",
    "toy_samples": "toyworld.experiments", "toy_subject_images": "toyworld.experiments",
    "toy_dreambooth_config": "toyworld.experiments",
    "toy_judge": "toyworld.experiments", "toy_prompt_agreement": "toyworld.experiments",
    "toy_dreambooth_scores": "toyworld.experiments", "score_table": "toyworld.experiments",
    "TrainPanel": "widgets", "GeneratePanel": "widgets", "ExperimentLog": "widgets", "playground": "widgets",
    "playground_config": "widgets",
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

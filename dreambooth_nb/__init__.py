"""dreambooth-nb: DreamBooth with MindSpore + mindone, one chapter per module.

    import dreambooth_nb as db
    db.setup()

Importing this package loads nothing heavy and changes no global state; names are fetched from
their module on first use (db.show_images comes from dreambooth_nb.common.viz, and so on).

The package is built in floors, each importing only from the floors below it (tests/test_layers.py keeps it so):
    common/        ground floor: runtime, defaults and the config, files, pictures, embedded models, toy-world scenes
    data           chapter 01: the subject's photos, their checks and transforms
    models, sampling   chapter 02: the pieces of Stable Diffusion; pipelines and guided sampling
    losses, batches, guide_data, prior   chapter 03: the DreamBooth objective, every step's batch (and the
                   reference script's data classes beside it), class images
    train/         chapter 04: the training engine and `python -m dreambooth_nb.train`
    infer          chapter 05: the fine-tuned model, before and after
    toyworld/      chapter 06: the toy world's model, judge and experiments
    widgets        chapter 07: the playground panels
    lora           chapter 08: LoRA DreamBooth, `python -m dreambooth_nb.train_lora`
    sdxl/          chapter 09: Stable Diffusion XL, its toy model, `python -m dreambooth_nb.train_sdxl_lora`
    demo, check, push, export, the command lines, this facade   on top
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it (one obvious place for each thing)
_EXPORTS = {
    # ground floor
    "setup": "common.runtime", "speed_check": "common.runtime",
    "cache_dir": "common.files", "said_wait": "common.waits", "fast_profile": "common.defaults", "inference_steps": "common.defaults",
    "DEFAULT_MODEL": "common.defaults", "REFERENCE_GUIDANCE": "common.defaults", "guidance_for": "common.assets",
    "TrainConfig": "common.config", "ConfigError": "common.config", "subject_config": "common.config",
    "tutorial_config": "common.config", "toy_dreambooth_config": "common.config", "playground_config": "common.config",
    "resolve_model": "common.assets", "subject_photos_dir": "common.assets", "portrait_photo": "common.assets",
    "tiny_model_path": "common.assets", "training_settings": "common.assets",
    "toy_pretraining_captions": "common.assets", "load_judge": "common.judge", "show_code": "common.viz",
    "show_images": "common.viz", "mean_difference": "common.viz", "image_grid": "common.viz", "plot_loss": "common.viz", "LivePlot": "common.viz",
    # 01
    "list_images": "data", "load_rgb": "data", "DataError": "data", "get_instance_photos": "data",
    "check_images": "data", "make_problem_examples": "data", "describe_photos": "data", "transform_steps": "data", "normalize": "data",
    # 02
    "load_components": "models", "same_weights": "models", "tokenize": "models", "prompt_tokens": "models", "encode_prompt": "models",
    "vae_round_trip": "models", "noised_versions": "models", "plot_noise_schedule": "models", "add_noise": "models",
    "alphas_cumprod": "models", "inspect_identifier": "models", "noise_scheduler": "models", "last_timestep": "models",
    "generate": "sampling", "save_images": "sampling", "with_scheduler": "sampling", "sampling_pipeline": "sampling",
    "guide": "sampling", "denoising_step": "sampling", "sample_by_hand": "sampling", "guidance_sweep": "sampling", "guidance_off_switch": "sampling",
    "denoising_trajectory": "sampling", "background_probe": "sampling", "show_background_probes": "sampling",
    "starting_noise": "sampling",
    # 03
    "ensure_class_images": "prior", "generate_class_images": "prior", "class_images": "prior",
    "prior_loss_terms": "prior", "training_batch": "prior", "dreambooth_loss": "losses",
    "DreamBoothDataset": "guide_data", "PromptDataset": "guide_data", "collate_fn": "guide_data",
    "guide_dataset": "guide_data", "guide_loader": "guide_data", "match_batch": "guide_data",
    # 04
    "train_dreambooth": "train.engine", "TrainResult": "train.engine", "stop_after": "train.engine",
    "list_checkpoints": "train.checkpoint", "weight_digest": "train.checkpoint",
    "read_metrics": "train.report", "plot_lr_schedule": "train.report", "samples_over_steps": "train.report",
    "validation_readings": "train.report",
    "run_msrun": "train.distributed", "msrun_command": "train.distributed", "msrun_shell": "train.distributed",
    # 05
    "load_pipeline": "infer", "swap_weights": "infer", "compare_models": "infer", "trained_model": "infer",
    # 06
    "toy_samples": "toyworld.experiments", "toy_subject_images": "toyworld.experiments",
    "toy_prompt_following": "toyworld.experiments", "toy_dreambooth_scores": "toyworld.experiments",
    "train_toy": "toyworld.experiments", "payoff_figure": "toyworld.experiments",
    "show_committed": "common.assets", "committed_table": "toyworld.experiments", "runs_table": "toyworld.experiments",
    "committed_sweep": "toyworld.experiments", "committed_prompt_following": "toyworld.experiments",
    "class_scores": "toyworld.evaluate",
    # 07
    "TrainPanel": "widgets", "GeneratePanel": "widgets", "ExperimentLog": "widgets", "playground": "widgets",
    # 08
    "LoraTrainConfig": "common.config", "lora_config": "common.config", "train_lora_adapters": "lora:train_lora",
    "adapter_config": "train.adapters", "lora_pipeline": "lora", "adapter_file": "lora", "merge_adapters": "lora", "unmerge_adapters": "lora",
    "strength_grid": "lora", "lora_size": "lora", "compare_methods": "lora", "full_config_of": "lora",
    "rank_sweep": "lora", "lora_panels": "lora",
    # 09
    "load_sdxl_pipeline": "sdxl.model", "sdxl_prompt_embeddings": "sdxl.model", "micro_conditioning_grid": "sdxl.model",
    "sdxl_lora_config": "common.config", "EVERY_LAYER_LORA": "common.config", "train_sdxl_adapters": "sdxl.training:train_sdxl_lora",
    "sdxl_memory_estimate": "sdxl.memory:estimate", "sdxl_config_of": "common.config", "sdxl_parts": "sdxl.model",
    "show_text_features": "sdxl.model", "micro_conditioning_measures": "sdxl.model", "conditioned": "sdxl.model",
    "derived_weights": "sdxl.toy", "sdxl_lora_pipeline": "sdxl.training",
    "compare_sd_sdxl": "sdxl.compare", "committed_lora_over_seeds": "sdxl.compare", "sdxl_panels": "sdxl.panels",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'dreambooth_nb' has no attribute {name!r}")
    module, _, attribute = where.partition(":")  # "module:attribute" where the name would shadow a command line
    value = getattr(importlib.import_module(f".{module}", __name__), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))

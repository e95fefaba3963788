"""The one training configuration: the flags of mindone's train_dreambooth.py with their names and defaults, its
checks (validate), and the presets every chapter starts from. The reference requires a model, photos and a prompt;
here they default to the toy-world model, its offline subject photos and their prompt."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from . import defaults
from .errors import UserError

LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


def flag(default: Any, help: str, choices: tuple | None = None, nargs: str | None = None, group: str = "training", *,
         resume_must_match: bool = False, graph_neutral: bool = False, shown: bool = False, secret: bool = False,
         rule: str | None = None, advice: str = "", offered: bool = True):
    """A dataclass field that carries every fact about its setting, read in one place (names_with):

    resume_must_match: a resumed run must have the checkpoint's value; graph_neutral: changing it never changes the
    compiled step; shown: listed on model cards; secret: never shown, written or put on a command line; rule (one of
    RULES) and advice: the range validate() checks; offered: the command line has the flag (else kept at its default).
    """
    meta = {"help": help, "choices": choices, "nargs": nargs, "group": group, "resume_must_match": resume_must_match,
            "graph_neutral": graph_neutral, "shown": shown, "secret": secret, "rule": rule, "advice": advice,
            "offered": offered}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def same_flag(base: type, name: str, *, offered: bool):
    """`base`'s field `name` again in a subclass, with its command line offering it or not."""
    f = base.__dataclass_fields__[name]
    meta = {**f.metadata, "offered": offered}
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=f.default_factory, metadata=meta)
    return field(default=f.default, metadata=meta)


def names_with(config, fact: str) -> tuple[str, ...]:
    """The settings of a config (or config class) whose flag says `fact` (see flag), in field order."""
    return tuple(f.name for f in fields(config) if f.metadata.get(fact))


def offered_fields(config) -> list[dataclasses.Field]:
    """The fields a config's command line offers as flags."""
    return [f for f in fields(config) if f.metadata.get("offered", True)]


class ConfigError(UserError, ValueError):
    """A training setting that cannot work, with every problem found listed."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"- {p}" for p in problems))


@dataclass
class TrainConfig:
    """DreamBooth training settings, named as the flags of mindone's train_dreambooth.py."""

    COMMAND: ClassVar[str] = "dreambooth_nb.train"  # the module whose command line takes these flags

    # model
    pretrained_model_name_or_path: str = flag(defaults.DEFAULT_MODEL, "Hub id, local diffusers folder, or an embedded model name (toy-world, tiny-random).", group="model", resume_must_match=True)
    revision: str | None = flag(None, "Revision of the model on the hub.", group="model", resume_must_match=True)
    variant: str | None = flag(None, "Variant of the model files, e.g. fp16.", group="model", resume_must_match=True)
    tokenizer_name: str | None = flag(None, "Tokenizer name or path if not the model's own.", group="model", resume_must_match=True)
    # data
    instance_data_dir: str | None = flag(None, "Folder of instance photos (default: the offline sample photos).", group="data", resume_must_match=True, graph_neutral=True)
    class_data_dir: str | None = flag(None, "Folder of class images for prior preservation (made when missing).", group="data", resume_must_match=True, graph_neutral=True)
    instance_prompt: str = flag("a photo of sks star", "Prompt with the identifier, e.g. 'a photo of sks dog'.", group="data", resume_must_match=True, graph_neutral=True, shown=True)
    class_prompt: str | None = flag(None, "Prompt for the subject's class, e.g. 'a photo of a dog'.", group="data", resume_must_match=True, graph_neutral=True, shown=True)
    with_prior_preservation: bool = flag(False, "Add the prior-preservation loss on class images.", group="data", resume_must_match=True, shown=True)
    prior_loss_weight: float = flag(1.0, "Weight lambda of the prior-preservation loss.", group="data", resume_must_match=True, shown=True, rule='non-negative', advice="1.0 is the paper's value")
    num_class_images: int = flag(100, "Class images needed; missing ones are generated from class_prompt.", group="data", resume_must_match=True, graph_neutral=True, shown=True, rule='at least 1')
    resolution: int = flag(512, "Training image size in pixels (multiple of 8).", group="data", resume_must_match=True, shown=True)
    center_crop: bool = flag(False, "Center-crop instead of random crop after resizing.", group="data", resume_must_match=True, graph_neutral=True)
    sample_batch_size: int = flag(4, "Batch size when generating class images.", group="data", graph_neutral=True, rule='at least 1')
    dataloader_num_workers: int = flag(1, "Data loading workers (kept for compatibility; data is preloaded).", group="data", graph_neutral=True)
    tokenizer_max_length: int | None = flag(None, "Token length (default: the tokenizer's).", group="data", resume_must_match=True, rule='at least 1', advice='or leave it out')
    # training
    output_dir: str = flag("dreambooth-model", "Where the model, checkpoints and logs are written.", graph_neutral=True)
    seed: int | None = flag(None, "Seed for reproducible training.", resume_must_match=True, graph_neutral=True, rule='non-negative', advice='any whole number from 0 works')
    train_text_encoder: bool = flag(False, "Train the text encoder as well as the UNet.", resume_must_match=True, shown=True)
    train_batch_size: int = flag(4, "Instance images per step (per device).", resume_must_match=True, shown=True, rule='at least 1')
    num_train_epochs: int = flag(1, "Epochs, used when max_train_steps is not given.", rule='at least 1')
    max_train_steps: int | None = flag(None, "Total optimisation steps; overrides num_train_epochs.", rule='at least 1', advice='or leave it out')
    checkpointing_steps: int = flag(500, "Save a resumable checkpoint every N steps.", graph_neutral=True, rule='at least 1')
    checkpoints_total_limit: int | None = flag(None, "Keep at most this many checkpoints.", graph_neutral=True, rule='at least 1', advice='or leave it out')
    resume_from_checkpoint: str | None = flag(None, "A checkpoint folder, or 'latest'.", graph_neutral=True)
    gradient_accumulation_steps: int = flag(1, "Micro-batches accumulated per optimiser step.", resume_must_match=True, shown=True, rule='at least 1')
    gradient_checkpointing: bool = flag(False, "Recompute activations in backward to save memory.")
    learning_rate: float = flag(5e-6, "Learning rate after warmup.", resume_must_match=True, shown=True, rule='positive', advice='DreamBooth uses 1e-6 to 1e-4')
    scale_lr: bool = flag(False, "Multiply the learning rate by devices x accumulation x batch size.", resume_must_match=True)
    lr_scheduler: str = flag("constant", "Learning-rate schedule.", choices=LR_SCHEDULERS, resume_must_match=True, shown=True)
    lr_warmup_steps: int = flag(500, "Warmup steps of the schedule.", resume_must_match=True, shown=True, rule='non-negative')
    lr_num_cycles: int = flag(1, "Hard restarts of cosine_with_restarts.", resume_must_match=True, rule='at least 1')
    lr_power: float = flag(1.0, "Power of the polynomial schedule.", resume_must_match=True, rule='positive', advice='1.0 is a straight line')
    adam_beta1: float = flag(0.9, "AdamW beta1.", resume_must_match=True, rule='fraction', advice='0.9 is usual')
    adam_beta2: float = flag(0.999, "AdamW beta2.", resume_must_match=True, rule='fraction', advice='0.999 is usual')
    adam_weight_decay: float = flag(1e-2, "AdamW weight decay.", resume_must_match=True, rule='non-negative', advice='1e-2 is the default')
    adam_epsilon: float = flag(1e-8, "AdamW epsilon.", resume_must_match=True, rule='positive', advice='1e-8 is usual')
    max_grad_norm: float = flag(1.0, "Clip gradients to this global norm (0 turns clipping off).", resume_must_match=True, rule='non-negative', advice='0 turns clipping off')
    offset_noise: bool = flag(False, "Add offset noise (0.1 x per-channel constant).", resume_must_match=True, graph_neutral=True, shown=True)
    snr_gamma: float | None = flag(None, "Min-SNR loss weighting gamma (5.0 is typical).", resume_must_match=True, shown=True, rule='positive', advice='5.0 is typical; or leave it out')
    pre_compute_text_embeddings: bool = flag(False, "Encode the prompts once and free the text encoder.", resume_must_match=True)
    text_encoder_use_attention_mask: bool = flag(False, "Pass the attention mask to the text encoder.", resume_must_match=True)
    skip_save_text_encoder: bool = flag(False, "Do not save the text encoder with the result.", graph_neutral=True)
    class_labels_conditioning: str | None = flag(None, "UNet class-label conditioning ('timesteps').", choices=(None, "timesteps"), resume_must_match=True)
    # devices and precision
    mixed_precision: str | None = flag(None, "fp16 or bf16 compute (Ascend); fp32 on CPU.", choices=(None, "no", "fp16", "bf16"), group="device", resume_must_match=True, shown=True)
    prior_generation_precision: str | None = flag(None, "Precision for generating class images.", choices=(None, "no", "fp32", "fp16", "bf16"), group="device", graph_neutral=True)
    distributed: bool = flag(False, "Data-parallel training (launch with msrun).", group="device")
    enable_mindspore_data_sink: bool = flag(False, "MindSpore data sinking (Ascend).", group="device")
    # validation and logging
    validation_prompt: str | None = flag(None, "Prompt sampled every validation_steps.", group="validation", graph_neutral=True)
    num_validation_images: int = flag(4, "Images per validation.", group="validation", graph_neutral=True, rule='at least 1')
    validation_steps: int = flag(100, "Validate every N steps.", group="validation", graph_neutral=True, rule='at least 1')
    validation_images: list | None = flag(None, "Images for image-conditioned pipelines (unused for text-to-image).", nargs="+", group="validation", graph_neutral=True)
    validation_scheduler: str = flag(defaults.SAMPLER, "Scheduler for validation sampling.", choices=("DPMSolverMultistepScheduler", "DDPMScheduler"), group="validation", graph_neutral=True)
    logging_dir: str = flag("logs", "TensorBoard folder inside output_dir.", group="validation", graph_neutral=True)
    report_to: str = flag("tensorboard", "Where scalars go: tensorboard, or none.", group="validation", graph_neutral=True)
    # hub (needs a network)
    push_to_hub: bool = flag(False, "Upload the result to a private hub repository after training (checked before any work).", group="hub", graph_neutral=True)
    hub_token: str | None = flag(None, "Hub token (else HF_TOKEN or a saved `huggingface-cli login`); never written anywhere.", group="hub", graph_neutral=True, secret=True)
    hub_model_id: str | None = flag(None, "Hub repository, e.g. your-name/sks-dog (default: the output folder's name).", group="hub", graph_neutral=True)
    # accepted by the reference script but always refused there
    enable_xformers_memory_efficient_attention: bool = flag(False, "Memory-efficient attention: mindone's flash attention on Ascend (refused on CPU and GPU).", group="device")
    allow_tf32: bool = flag(False, "TF32 (not supported on MindSpore).", group="unsupported")
    use_8bit_adam: bool = flag(False, "8-bit Adam (not supported on MindSpore).", group="unsupported")
    set_grads_to_none: bool = flag(False, "Grads to None (not supported on MindSpore).", group="unsupported")

    # ------------------------------------------------------------------ helpers
    def replace(self, **changes) -> "TrainConfig":
        """A copy with some settings changed (unknown names are an error)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigError([f"unknown setting {name!r}; see TrainConfig for the names" for name in sorted(unknown)])
        return dataclasses.replace(self, **changes)

    def changed(self) -> dict[str, Any]:
        """Settings that differ from this class's defaults (the reference's, where it has one)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != _default(f)}

    def as_rows(self, only_changed: bool = False) -> list[tuple[str, Any]]:
        items = self.changed() if only_changed else {f.name: getattr(self, f.name) for f in fields(self)}
        return list(items.items())

    def _repr_html_(self) -> str:
        secret = names_with(self, "secret")
        rows = "".join(f"<tr><td><code>--{k}</code></td><td>{'(hidden)' if k in secret else repr(v)}</td></tr>"
                       for k, v in self.as_rows(True))
        return f"<table><tr><th>flag</th><th>value</th></tr>{rows}</table>"

    def to_args(self) -> list[str]:
        """The command line that reproduces this config with `python -m dreambooth_nb.train` (never the hub token:
        give it with HF_TOKEN or `huggingface-cli login`)."""
        args = []
        skip = set(names_with(self, "secret")) | {f.name for f in fields(self)} - {f.name for f in offered_fields(self)}
        for name, value in self.changed().items():
            if name in skip:  # never a secret, never a flag the command lacks
                continue
            if value is True:
                args.append(f"--{name}")
            elif value is False:  # a flag whose default is True takes a value (cli._yes_no)
                args.append(f"--{name}=false")
            elif value is None:  # an option left unset
                continue
            elif isinstance(value, list):
                args += [f"--{name}", *map(str, value)]
            else:  # every other value, 0 and 0.0 included (0 == False, so compare by identity above)
                args.append(f"--{name}={value}")
        return args

    def command(self) -> str:
        """The shell command that runs this config: `python -m dreambooth_nb.train --flag=value ...`."""
        import shlex

        return shlex.join(["python", "-m", self.COMMAND, *self.to_args()])

    def validate(self) -> "TrainConfig":
        """Raise ConfigError listing every problem (flag, value, what to do); return self when all is well."""
        typed = {name: problem for name, problem in _type_problems(self)}
        checked = dataclasses.replace(self, **{f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                                               for f in fields(self) if f.name in typed})
        problems = list(typed.values()) + [p for check in checked.checks() for p in check(checked)]
        if problems:
            raise ConfigError(problems)
        return self

    def checks(self) -> tuple:
        """The value checks validate() runs (after the type check), each returning its problems."""
        return _CHECKS

    def notes(self) -> list[str]:
        """Settings that work but probably do not do what was meant (printed as warnings, like the reference)."""
        out = []
        if not self.with_prior_preservation:
            if self.class_data_dir:
                out.append("--class_data_dir is ignored without --with_prior_preservation.")
            if self.class_prompt and not self.validation_prompt:
                out.append("--class_prompt is ignored without --with_prior_preservation (it only adds validation "
                           "images, and there is no --validation_prompt).")
        if self.max_train_steps and self.lr_warmup_steps >= self.max_train_steps and self.lr_scheduler != "constant":
            out.append(f"--lr_warmup_steps={self.lr_warmup_steps} is not below --max_train_steps={self.max_train_steps}: "
                       "the learning rate never leaves warmup.")
        if (self.hub_token or self.hub_model_id) and not self.push_to_hub:
            out.append("--hub_token/--hub_model_id are only used with --push_to_hub; ignored.")
        return out

    @property
    def seed_used(self) -> int:
        """The seed a run with these settings uses: --seed, else the course's (defaults.SEED); the one place it is
        resolved (a run records it as used)."""
        return defaults.SEED if self.seed is None else self.seed

    def learning_rate_for(self, world_size: int = 1) -> float:
        """The peak learning rate: learning_rate, times devices x accumulation x batch size with --scale_lr."""
        if not self.scale_lr:
            return self.learning_rate
        return self.learning_rate * world_size * self.gradient_accumulation_steps * self.train_batch_size


@dataclass
class LoraTrainConfig(TrainConfig):
    """LoRA DreamBooth settings, named as the flags of mindone's train_dreambooth_lora.py: the full fine-tuning flags
    less six it lacks, plus the adapters' rank and validation every N epochs; its own learning rate and folder."""

    COMMAND: ClassVar[str] = "dreambooth_nb.train_lora"

    # full fine-tuning flags train_dreambooth_lora.py lacks (kept at their defaults)
    validation_steps: int = same_flag(TrainConfig, "validation_steps", offered=False)
    validation_scheduler: str = same_flag(TrainConfig, "validation_scheduler", offered=False)
    offset_noise: bool = same_flag(TrainConfig, "offset_noise", offered=False)
    snr_gamma: float | None = same_flag(TrainConfig, "snr_gamma", offered=False)
    set_grads_to_none: bool = same_flag(TrainConfig, "set_grads_to_none", offered=False)
    skip_save_text_encoder: bool = same_flag(TrainConfig, "skip_save_text_encoder", offered=False)

    output_dir: str = flag("lora-dreambooth-model", "Where the adapter, checkpoints and logs are written.", graph_neutral=True)
    learning_rate: float = flag(5e-4, "Learning rate after warmup (adapters start at zero: LoRA takes larger rates).", resume_must_match=True, shown=True, rule='positive', advice='DreamBooth uses 1e-6 to 1e-4')
    lora_rank: int = flag(4, "Rank r of the adapters (lora_alpha = r, as the reference).", resume_must_match=True, shown=True, rule='at least 1', advice='4 to 128 is usual')
    lora_layers: str | None = flag(None, "The UNet layers that get adapters, commas between (e.g. 'to_k,to_q,to_v,to_out.0', as diffusers' --lora_layers); 'all': every convolution and linear layer as well; default: the reference's attention layers.", resume_must_match=True, shown=True)
    validation_epochs: int = flag(50, "Validate every N epochs (an epoch: every instance photo once).", group="validation", graph_neutral=True, rule='at least 1')

    def checks(self) -> tuple:
        return (*_CHECKS, _check_lora_layers)


NEEDS_DATASETS = ("dataset_name", "dataset_config_name", "cache_dir", "caption_column")


@dataclass
class SDXLLoraTrainConfig(LoraTrainConfig):
    """SDXL DreamBooth LoRA settings, named as the flags of mindone's train_dreambooth_lora_sdxl.py (its own
    defaults: 1024 px, learning rate 1e-4, weight decay 1e-4, a text-encoder learning rate)."""

    COMMAND: ClassVar[str] = "dreambooth_nb.train_sdxl_lora"

    # train_dreambooth_lora_sdxl.py has --snr_gamma again, and lacks these (kept at their defaults)
    snr_gamma: float | None = same_flag(TrainConfig, "snr_gamma", offered=True)
    tokenizer_name: str | None = same_flag(TrainConfig, "tokenizer_name", offered=False)
    pre_compute_text_embeddings: bool = same_flag(TrainConfig, "pre_compute_text_embeddings", offered=False)
    tokenizer_max_length: int | None = same_flag(TrainConfig, "tokenizer_max_length", offered=False)
    text_encoder_use_attention_mask: bool = same_flag(TrainConfig, "text_encoder_use_attention_mask", offered=False)
    validation_images: list | None = same_flag(TrainConfig, "validation_images", offered=False)
    class_labels_conditioning: str | None = same_flag(TrainConfig, "class_labels_conditioning", offered=False)

    pretrained_model_name_or_path: str = flag(defaults.TOY_XL_MODEL, "SDXL hub id, local folder, or toy-world-xl.", group="model", resume_must_match=True)
    pretrained_vae_model_name_or_path: str | None = flag(None, "Another VAE (e.g. madebyollin/sdxl-vae-fp16-fix), a folder or hub id.", group="model", resume_must_match=True)
    dataset_name: str | None = flag(None, "A hub dataset of instance images (needs the datasets library and a network: refused).", group="data")
    dataset_config_name: str | None = flag(None, "The dataset's config (with --dataset_name).", group="data")
    cache_dir: str | None = flag(None, "Where hub datasets are cached (with --dataset_name).", group="data")
    image_column: str = flag("image", "The dataset's image column (with --dataset_name).", group="data")
    caption_column: str | None = flag(None, "The dataset's caption column (with --dataset_name).", group="data")
    repeats: int = flag(1, "Repeat the instance photos this many times in each epoch.", group="data", resume_must_match=True, rule='at least 1')
    random_flip: bool = flag(False, "Flip training pictures left-right at random (the time ids are unchanged).", group="data", resume_must_match=True)
    resolution: int = flag(1024, "Training image size in pixels (SDXL's own is 1024).", group="data", resume_must_match=True, shown=True)
    learning_rate: float = flag(1e-4, "Learning rate of the UNet's adapters after warmup.", resume_must_match=True, shown=True, rule='positive', advice='DreamBooth uses 1e-6 to 1e-4')
    text_encoder_lr: float = flag(5e-6, "Learning rate of the text encoders' adapters (with --train_text_encoder).", resume_must_match=True, rule='positive', advice="5e-6 is the reference's")
    optimizer: str = flag("AdamW", "AdamW (prodigy needs PyTorch's prodigyopt: refused).", resume_must_match=True)
    prodigy_beta3: float | None = flag(None, "Prodigy's beta3 (with --optimizer=prodigy).")
    prodigy_decouple: bool = flag(True, "Prodigy's decoupled weight decay (with --optimizer=prodigy).")
    adam_weight_decay: float = flag(1e-4, "AdamW weight decay of the UNet's adapters.", resume_must_match=True, rule='non-negative', advice='1e-2 is the default')
    adam_weight_decay_text_encoder: float = flag(1e-3, "AdamW weight decay of the text encoders' adapters.", resume_must_match=True, rule='non-negative')
    prodigy_use_bias_correction: bool = flag(True, "Prodigy's bias correction (with --optimizer=prodigy).")
    prodigy_safeguard_warmup: bool = flag(True, "Prodigy's warmup safeguard (with --optimizer=prodigy).")
    do_edm_style_training: bool = flag(False, "EDM-style objective: the clean latents, weighted by 1/sigma^2.", resume_must_match=True)
    use_dora: bool = flag(False, "DoRA adapters (mindone 0.3.0 has none: refused).")

    PRODIGY_FLAGS: ClassVar[tuple] = ("prodigy_beta3", "prodigy_decouple", "prodigy_use_bias_correction",
                                      "prodigy_safeguard_warmup")

    def checks(self) -> tuple:
        return (*_CHECKS, _check_lora_layers, _check_sdxl)

    def notes(self) -> list[str]:
        changed = self.changed()
        return super().notes() + [f"--{n} only applies to --optimizer=prodigy; ignored."
                                  for n in self.PRODIGY_FLAGS if n in changed]


def any_config_names_with(fact: str) -> tuple[str, ...]:
    """names_with over every command's settings (SDXL LoRA's config holds every field of the other two): for what reads
    a saved config as a plain dict."""
    return names_with(SDXLLoraTrainConfig, fact)


def _default(f: dataclasses.Field):
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


# ---------------------------------------------------------------------- presets
def apply_test_profile(config: TrainConfig) -> TrainConfig:
    """Under DREAMBOOTH_NB_FAST=1 (tests and CI): at most 8 steps and 4 class images; unchanged otherwise."""
    if not defaults.fast_profile():
        return config
    steps = min(config.max_train_steps or defaults.TEST_PROFILE_STEPS, defaults.TEST_PROFILE_STEPS)
    changes = dict(max_train_steps=steps, num_class_images=min(config.num_class_images, defaults.TEST_PROFILE_CLASS_IMAGES),
                   checkpointing_steps=min(config.checkpointing_steps, max(steps // 2, 1)))
    if "validation_steps" in {f.name for f in offered_fields(type(config))}:  # LoRA commands validate per epoch
        changes["validation_steps"] = max(steps, 1)
    return config.replace(**changes)


def class_images_dir(model: str, class_prompt: str) -> str:
    """cache_dir()/data/class-<noun>-<model>: another model's prior is another set, and so is another version
    of the committed toy-world model (its weights' digest is part of the name)."""
    import re

    from .assets import is_toy_model, toy_model_digest
    from .files import cache_dir

    slug = re.sub(r"[^\w.]+", "-", model).strip("-")
    if is_toy_model(model):
        slug += "-" + toy_model_digest()
    return str(cache_dir() / "data" / f"class-{class_prompt.split()[-1]}-{slug}")


def subject_config(with_prior: bool = True, **changes) -> TrainConfig:
    """The offline sample subject (the toy world's striped star) on the default model, shortened by the test profile.

    The resolution is the model's own; class images are kept per model (class_images_dir).
    """
    from . import scenes
    from .assets import native_resolution, subject_photos_dir

    model = str(changes.get("pretrained_model_name_or_path", defaults.DEFAULT_MODEL))
    config = TrainConfig(
        pretrained_model_name_or_path=model, instance_data_dir=str(subject_photos_dir()),
        instance_prompt=scenes.SUBJECT_PROMPT, class_prompt=scenes.SUBJECT_CLASS_PROMPT, with_prior_preservation=with_prior,
        class_data_dir=class_images_dir(model, scenes.SUBJECT_CLASS_PROMPT), num_class_images=16,
        resolution=native_resolution(model), center_crop=True, train_batch_size=2, sample_batch_size=4,
        seed=defaults.SEED, output_dir=str(Path("outputs") / "sample-subject"), report_to="none",
    )
    return apply_test_profile(config.replace(**changes))


TUTORIAL_OUTPUT = "outputs/04-training/model"


def tutorial_config(with_prior: bool = False, **changes) -> TrainConfig:
    """Chapter 04's run: the offline sample subject on the default model, a few minutes on a CPU (seconds under the test profile).

    with_prior=True adds prior preservation with chapter 03's class images.
    """
    settings = dict(
        output_dir=TUTORIAL_OUTPUT, max_train_steps=200, learning_rate=defaults.TOY_LEARNING_RATE, lr_warmup_steps=0,
        checkpointing_steps=50, checkpoints_total_limit=2, validation_prompt="a photo of sks star on a blue background",
        num_validation_images=2, validation_steps=100, report_to="tensorboard",
    )
    if not with_prior:  # no class settings on the command line when they would be ignored
        settings.update(class_prompt=None, class_data_dir=None)
    return subject_config(with_prior, **{**settings, **changes})


# chapter 06's DreamBooth runs on the toy world: (full profile, test profile); the test profile's 8 steps would show nothing
TOY_RUNS_DIR = Path("outputs") / "toyworld-dreambooth"


def toy_dreambooth_config(prior: bool, output_dir: str | None = None, **changes) -> TrainConfig:
    """Chapter 06's runs: the sample subject on toy-world, with or without prior preservation (shorter under the test profile)."""
    settings = dict(
        num_class_images=defaults.by_profile(defaults.TOY_CLASS_IMAGES), sample_batch_size=8, train_batch_size=4,
        max_train_steps=defaults.by_profile(defaults.TOY_STEPS), learning_rate=defaults.TOY_LEARNING_RATE,
        lr_warmup_steps=0, checkpointing_steps=10_000,
        output_dir=output_dir or str(TOY_RUNS_DIR / ("with-prior" if prior else "no-prior")),
    )
    base = subject_config(prior, pretrained_model_name_or_path=defaults.TOY_MODEL)
    return dataclasses.replace(base, **{**settings, **changes})


PLAYGROUND_DIR = Path("outputs") / "playground"
LORA_DIR = Path("outputs") / "08-lora"


def playground_config(output_dir: str | None = None, **changes) -> TrainConfig:
    """Chapter 07's documented playground run: chapter 06's run without prior, shortened by the test profile."""
    config = toy_dreambooth_config(prior=False, output_dir=output_dir or str(PLAYGROUND_DIR / "model"))
    return apply_test_profile(config).replace(**changes)


# ---------------------------------------------------------------------- checks
def _kind(annotation: str) -> tuple[type, bool]:
    """(expected Python type, whether None is allowed) from a field's annotation string."""
    optional = "None" in annotation
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("list", list), ("str", str)):
        if annotation.startswith(name):
            return kind, optional
    return str, optional


def _type_problems(c: TrainConfig) -> list[tuple[str, str]]:
    """(field name, problem) for each setting whose value does not have the type its flag parses to (what the
    command line would give); validate() then checks the other values with that field's default in its place, so
    one bad type does not hide the other problems."""
    out = []
    for f in fields(c):
        kind, optional = _kind(str(f.type))
        value = getattr(c, f.name)
        if value is None and optional:
            continue
        ok = (isinstance(value, bool) if kind is bool else
              isinstance(value, int) and not isinstance(value, bool) if kind is int else
              isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else
              isinstance(value, kind))
        if not ok:
            example = {bool: "True or False", int: "a whole number such as 4", float: "a number such as 1e-4",
                       list: "a list", str: "text"}[kind]
            out.append((f.name, f"--{f.name}={value!r} is a {type(value).__name__}; it must be {example}"
                                f"{' (or None)' if optional else ''}."))
    return out


def _check_finite(c: TrainConfig) -> list[str]:
    """No nan or inf in any number (a nan learning rate trains a model of nans)."""
    return [f"--{f.name}={getattr(c, f.name)} is not a finite number; give an ordinary value."
            for f in fields(c) if isinstance(getattr(c, f.name), float) and not math.isfinite(getattr(c, f.name))]


# rules of flag(rule=...): "positive" > 0, "at least 1", "non-negative" >= 0, "fraction" in [0, 1)
RULES = {"positive": (lambda v: v > 0, "must be above 0"), "at least 1": (lambda v: v >= 1, "must be at least 1"),
         "non-negative": (lambda v: v >= 0, "cannot be negative"), "fraction": (lambda v: 0 <= v < 1, "must be in [0, 1)")}


def _check_ranges(c: TrainConfig) -> list[str]:
    """Each number within the range its flag's rule names (flag(rule=..., advice=...))."""
    out = []
    for f in fields(c):
        rule, advice, value = f.metadata.get("rule"), f.metadata.get("advice"), getattr(c, f.name)
        if rule is None or value is None or (isinstance(value, float) and not math.isfinite(value)):
            continue  # nan and inf are _check_finite's
        holds, says = RULES[rule]
        if not holds(value):
            out.append(f"--{f.name}={value} {says}" + (f" ({advice})." if advice else "."))
    return out


def _check_resolution(c: TrainConfig) -> list[str]:
    if c.resolution < 8 or c.resolution % 8:
        return [f"--resolution={c.resolution} must be a multiple of 8 (Stable Diffusion's VAE downsamples by 8; try 512, or 32 for the default toy-world model)."]
    return []


def _check_choices(c: TrainConfig) -> list[str]:
    out = []
    for f in fields(c):
        choices = f.metadata.get("choices")
        value = getattr(c, f.name)
        if choices and value not in choices:
            shown = ", ".join(str(x) for x in choices if x is not None)
            out.append(f"--{f.name}={value!r} is not one of: {shown}.")
    return out


def _check_prior(c: TrainConfig) -> list[str]:
    if not c.with_prior_preservation:
        return []
    out = []
    if not c.class_prompt:
        out.append("--with_prior_preservation needs --class_prompt, e.g. --class_prompt='a photo of a dog'.")
    if not c.class_data_dir:
        out.append("--with_prior_preservation needs --class_data_dir (a folder; missing class images are generated there).")
    return out


def _check_prompts(c: TrainConfig) -> list[str]:
    if not c.instance_prompt or not c.instance_prompt.strip():
        return ["--instance_prompt is empty; give one with the identifier, e.g. 'a photo of sks dog'."]
    return []


def _check_text_encoder(c: TrainConfig) -> list[str]:
    if c.train_text_encoder and c.pre_compute_text_embeddings:
        return ["--train_text_encoder cannot be used with --pre_compute_text_embeddings (a trained encoder changes the embeddings); drop one."]
    return []


def _check_paths(c: TrainConfig) -> list[str]:
    out = []
    if not c.output_dir.strip():
        out.append("--output_dir is empty; name the folder the model and checkpoints go to, e.g. --output_dir=sks-dog.")
    elif Path(c.output_dir).expanduser().is_file():
        out.append(f"--output_dir={c.output_dir} is a file; give a folder (it is made when missing).")
    if c.with_prior_preservation and c.class_data_dir and Path(c.class_data_dir).expanduser().is_file():
        out.append(f"--class_data_dir={c.class_data_dir} is a file; give a folder (missing class images are made there).")
    if c.instance_data_dir and not Path(c.instance_data_dir).expanduser().is_dir():
        out.append(f"--instance_data_dir={c.instance_data_dir} is not a folder; point it at a folder of photos of your subject.")
    resume = c.resume_from_checkpoint
    if resume and resume != "latest" and not Path(resume).is_dir() and not (Path(c.output_dir) / resume).is_dir():
        out.append(f"--resume_from_checkpoint={resume} is not a checkpoint folder; use 'latest' or a checkpoint-N folder in {c.output_dir}.")
    return out


def _check_lora_layers(c: LoraTrainConfig) -> list[str]:
    """--lora_layers: 'all', or layer names (the last parts of module names, as peft matches them), commas between."""
    if c.lora_layers is None or c.lora_layers.strip() == "all":
        return []
    bad = [name for name in (n.strip() for n in c.lora_layers.split(",")) if not re.fullmatch(r"[A-Za-z_][\w.]*", name)]
    if bad:
        return [f"--lora_layers={c.lora_layers!r}: give layer names with commas between, such as "
                f"'to_k,to_q,to_v,to_out.0' or 'conv1,conv2', or 'all' (not: {', '.join(map(repr, bad))})."]
    return []


def _check_sdxl(c: SDXLLoraTrainConfig) -> list[str]:
    """The SDXL script's flags that cannot work here, each with the reason."""
    out = [f"--{name} reads a dataset from the hub with the datasets library, which needs a network; put the photos "
           f"in a folder and give --instance_data_dir." for name in NEEDS_DATASETS if getattr(c, name)]
    if c.optimizer != "AdamW":
        out.append(f"--optimizer={c.optimizer}: only AdamW exists for MindSpore here (Prodigy is a PyTorch package); "
                   f"drop the flag.")
    if c.use_dora:
        out.append("--use_dora: mindone 0.3.0's PEFT has no DoRA layers; drop the flag (plain LoRA is trained).")
    if c.do_edm_style_training and c.snr_gamma is not None:
        out.append("--snr_gamma cannot be used with --do_edm_style_training (the reference refuses the pair too).")
    return out


def _check_unsupported(c: TrainConfig) -> list[str]:
    out = [f"--{f.name} is not supported on MindSpore; remove it." for f in fields(c)
           if f.metadata.get("group") == "unsupported" and getattr(c, f.name)]
    if c.class_labels_conditioning not in (None, "timesteps"):
        out.append("--class_labels_conditioning only takes 'timesteps'.")
    if c.report_to not in ("tensorboard", "none"):
        out.append(f"--report_to={c.report_to!r}: only 'tensorboard' or 'none' work here (wandb and comet_ml need a network).")
    if c.validation_images:
        out.append("--validation_images is for image-conditioned pipelines; Stable Diffusion text-to-image takes none: "
                   "remove it and set --validation_prompt.")
    return out


def _check_offered(c: TrainConfig) -> list[str]:
    """A setting the command line has no flag for stays at its default: else `command()` would train another run."""
    offered, changed = {f.name for f in offered_fields(c)}, c.changed()
    return [f"{f.name}={changed[f.name]!r}: `python -m {c.COMMAND}` has no --{f.name} (nor has the reference "
            f"script), so the printed command would train another run; leave it at {_default(f)!r}"
            for f in fields(c) if f.name in changed and f.name not in offered]


def _check_distributed(c: TrainConfig) -> list[str]:
    from .runtime import launched_by_launcher

    if c.distributed and not launched_by_launcher():
        return ["--distributed needs one process per device started by msrun, e.g. "
                "`msrun --worker_num=2 --local_worker_num=2 --master_port=8118 --log_dir=msrun_log --join=True "
                "python -m dreambooth_nb.train --distributed ...`; or drop --distributed to train in this process."]
    return []


_CHECKS = (_check_finite, _check_ranges, _check_resolution, _check_choices, _check_prior, _check_prompts,
           _check_text_encoder, _check_paths, _check_unsupported, _check_offered, _check_distributed)


LORA_LR_FACTOR = 10  # LoRA's learning rate over full fine-tuning's in the same recipe (adapters start at zero)


def lora_config(**changes) -> LoraTrainConfig:
    """Chapter 08's LoRA run: chapter 06's subject and settings, rank-4 adapters at a LoRA learning rate."""
    base = toy_dreambooth_config(prior=True, output_dir=str(LORA_DIR / "adapters"))
    settings = {f.name: getattr(base, f.name) for f in offered_fields(LoraTrainConfig) if hasattr(base, f.name)}
    return LoraTrainConfig(**{**settings, "learning_rate": base.learning_rate * LORA_LR_FACTOR, "lora_rank": 4,
                              **changes})


# LoRA on every convolution and linear layer of the UNet with the settings that drew the toy subject best in the
# pilots (README, SDXL section: rank 16, lr 1e-3, 900 steps; prior weight 0.25, where 0.5 lost one seed of three);
# chapter 09 compares it with the reference's attention adapters
EVERY_LAYER_LORA = dict(lora_layers="all", lora_rank=16, learning_rate=1e-3, prior_loss_weight=0.25, max_train_steps=900)


def lora_playground_config(**changes) -> LoraTrainConfig:
    """The LoRA panels' documented run: chapter 08's without prior, shortened by the test profile."""
    return apply_test_profile(lora_config(with_prior_preservation=False, output_dir=str(LORA_DIR / "panel"))).replace(**changes)


XL_DIR = Path("outputs") / "09-sdxl"


def sdxl_config_of(lora: LoraTrainConfig, **changes) -> SDXLLoraTrainConfig:
    """The same LoRA run on the toy-world SDXL: every shared setting kept; the model, its own class images and 32 px
    changed; written beside the SD run (output_dir/../xl) unless changes say otherwise."""
    from . import scenes

    settings = {f.name: getattr(lora, f.name) for f in fields(LoraTrainConfig)}
    settings.update(pretrained_model_name_or_path=defaults.TOY_XL_MODEL, resolution=scenes.SIZE,
                    class_data_dir=class_images_dir(defaults.TOY_XL_MODEL, lora.class_prompt or scenes.SUBJECT_CLASS_PROMPT),
                    output_dir=str(Path(lora.output_dir).with_name("xl")))
    return SDXLLoraTrainConfig(**{**settings, **changes})


def sdxl_lora_config(**changes) -> SDXLLoraTrainConfig:
    """Chapter 09's run: chapter 08's LoRA recipe on the toy-world SDXL (its own class images, 32 px)."""
    settings = dict(output_dir=str(XL_DIR / "adapters"), validation_prompt="a photo of sks star", num_validation_images=4,
                    validation_epochs=defaults.by_profile((50, 5)))  # samples at 3 steps of the run (2 in the test profile)
    return sdxl_config_of(lora_config(), **{**settings, **changes})

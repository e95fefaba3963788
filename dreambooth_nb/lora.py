"""Chapter 08: LoRA DreamBooth. Small adapters W + (alpha/r)·B·A on the attention projections, trained by the same
engine as full fine-tuning, saved as one small file that mindone and diffusers on PyTorch both load.

Training goes through train.engine with the LoraAdapters method: the base weights are frozen, only the adapters
(mindone's own PEFT layers, compiled on CPU like the rest) are trained and checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import defaults
from .common.config import LoraTrainConfig
from .common.files import write_text_atomic
from .common.tables import Table
from .models import Components
from .train.engine import FullFineTuning, networks_to_train
from .widgets import GeneratePanel, TrainPanel

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights / load_lora_weights use
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")  # as mindone's reference script
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def lora_config(rank: int, targets: tuple):
    """mindone's LoraConfig: rank r, alpha = r (scale 1), Gaussian A and zero B (training starts at the base model)."""
    from mindone.diffusers._peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))


def has_adapter(net) -> bool:
    """True when a network already carries the adapters (a second run in the same kernel trains them further)."""
    return "default" in (getattr(net, "peft_config", None) or {})


def adapter_parameters(net) -> list:
    """The adapter weights of a network (lora_A and lora_B of every target)."""
    return [p for name, p in net.parameters_and_names() if ".lora_" in name]


@dataclass(frozen=True)
class LoraAdapters(FullFineTuning):
    """What LoRA trains and keeps (a method for train_dreambooth): rank-r adapters, nothing else."""

    whole_networks_in_checkpoints: bool = False  # a checkpoint holds the adapters only: a few MB
    rank: int = 4

    def networks(self, config, components: Components) -> dict:
        """The UNet (and text encoder when asked) with adapters added once; only the adapters trainable."""
        nets = networks_to_train(config, components)
        for name, net in nets.items():
            for p in net.get_parameters():
                p.requires_grad = False
            if not has_adapter(net):
                net.add_adapter(lora_config(self.rank, UNET_TARGETS if name == "unet" else TEXT_TARGETS))
            for p in adapter_parameters(net):
                p.requires_grad = True
        return nets

    def save_result(self, components: Components, output_dir: Path, config) -> None:
        """output_dir/pytorch_lora_weights.safetensors (diffusers key names) and the settings beside it."""
        save_adapters(components, output_dir, config)


def adapter_state(net) -> dict:
    """A network's adapter weights with diffusers' key names ('...to_q.lora.down.weight')."""
    from mindone.diffusers._peft.utils import get_peft_model_state_dict
    from mindone.diffusers.utils import convert_state_dict_to_diffusers

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(net))


def save_adapters(components: Components, output_dir: Path, config) -> Path:
    """Write the adapter file (unet.* and text_encoder.* keys, as diffusers' save_lora_weights) atomically."""
    from mindone.diffusers import StableDiffusionPipeline

    from .common.cards import shareable_settings

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".lora.tmp-{os.getpid()}"  # written whole first, then each file renamed into place
    text = adapter_state(components.text_encoder) if has_adapter(components.text_encoder) else None
    StableDiffusionPipeline.save_lora_weights(str(tmp), unet_lora_layers=adapter_state(components.unet),
                                              text_encoder_lora_layers=text)
    write_text_atomic(tmp / "train_config.json", json.dumps(shareable_settings(config), indent=1))
    for part in tmp.iterdir():
        os.replace(part, output_dir / part.name)
    tmp.rmdir()
    return output_dir / ADAPTER_FILE


# ------------------------------------------------------------------------------ training
def examples_per_epoch(config: LoraTrainConfig) -> int:
    """An epoch as the reference counts it: every instance photo once (or every class image, when more)."""
    from .common.assets import subject_photos_dir
    from .data import check_images

    photos = len(check_images(config.instance_data_dir or subject_photos_dir(), config.resolution).usable)
    return max(photos, config.num_class_images if config.with_prior_preservation else 0, 1)


def validation_every(config: LoraTrainConfig) -> int:
    """--validation_epochs in optimizer steps."""
    per_step = config.train_batch_size * config.gradient_accumulation_steps
    return config.validation_epochs * max(1, math.ceil(examples_per_epoch(config) / per_step))


def train_lora(config: LoraTrainConfig, components: Components | None = None, progress: bool = True, on_step=None):
    """LoRA DreamBooth on the training engine; returns its TrainResult (the adapter file in config.output_dir)."""
    from .train.engine import train_dreambooth

    config = config.replace(validation_steps=validation_every(config))
    return train_dreambooth(config, components, progress, on_step, method=LoraAdapters(rank=config.lora_rank))


# ------------------------------------------------------------------------------ inference
def adapter_file(folder: str | os.PathLike) -> Path:
    """The adapter file of a LoRA output folder (or the file itself)."""
    path = Path(folder)
    path = path / ADAPTER_FILE if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: give the output folder of a LoRA run "
                                f"(python -m dreambooth_nb.train_lora) or its {ADAPTER_FILE}.")
    return path


def lora_pipeline(base: str | None, adapters: str | os.PathLike):
    """A pipeline of the base model with the adapters loaded by mindone's load_lora_weights, before its first
    compile (the guide's way; the adapters' strength is then fixed at 1: use merge_adapters for a slider)."""
    from .infer import load_pipeline

    pipe = load_pipeline(base or defaults.DEFAULT_MODEL)
    pipe.load_lora_weights(str(adapter_file(adapters).parent))
    return pipe


def adapter_updates(adapters: str | os.PathLike, prefix: str = "unet.") -> dict[str, np.ndarray]:
    """{weight name: (alpha/r)·B·A} for every adapted weight of one network (the change LoRA makes to W)."""
    from safetensors.numpy import load_file

    state = load_file(str(adapter_file(adapters)))
    updates = {}
    for key, down in state.items():
        if key.startswith(prefix) and key.endswith(".lora.down.weight"):
            up = state[key.replace(".lora.down.", ".lora.up.")]
            rank = down.shape[0]
            alpha = float(state.get(key.replace(".lora.down.weight", ".alpha"), rank))
            weight = key[len(prefix):].replace(".lora.down.weight", ".weight")
            updates[weight] = (alpha / rank) * (up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(
                up.shape[:1] + down.shape[1:])
    return updates


def merge_adapters(pipe, adapters: str | os.PathLike, strength: float = 1.0) -> int:
    """Put W + strength·(alpha/r)·B·A into the pipeline's own weights (as fuse_lora does); returns how many weights
    changed. The compiled sampler stays as it is, so a new strength costs nothing: call it again, or unmerge."""
    import mindspore as ms

    unmerge_adapters(pipe)
    base = pipe.__dict__.setdefault("_base_weights", {})
    count = 0
    for prefix, net in (("unet.", pipe.unet), ("text_encoder.", pipe.text_encoder)):
        params = dict(net.parameters_and_names())
        for name, update in adapter_updates(adapters, prefix).items():
            param = params[name]
            base[(prefix, name)] = param.asnumpy().copy()
            param.set_data(ms.Tensor(base[(prefix, name)] + strength * update, dtype=param.dtype))
            count += 1
    return count


def unmerge_adapters(pipe) -> None:
    """Give the pipeline its base weights back."""
    import mindspore as ms

    base = pipe.__dict__.get("_base_weights", {})
    nets = {"unet.": pipe.unet, "text_encoder.": pipe.text_encoder}
    for (prefix, name), value in base.items():
        param = dict(nets[prefix].parameters_and_names())[name]
        param.set_data(ms.Tensor(value, dtype=param.dtype))
    base.clear()


def strength_grid(pipe, adapters, prompts: list[str], strengths=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5), seed: int = 0):
    """One row per prompt, one column per adapter strength (merged weights, the same seed); returns the figure."""
    from .common.viz import show_images
    from .sampling import generate

    images, titles = [], []
    for prompt in prompts:
        for strength in strengths:
            merge_adapters(pipe, adapters, strength)
            images += generate(pipe, [prompt], [seed], batch_size=1)
            titles.append(f"strength {strength:g}" + (f"\n{prompt}" if strength == strengths[0] else ""))
    unmerge_adapters(pipe)
    return show_images(images, titles=titles, ncols=len(strengths), scale=1.6)


# ------------------------------------------------------------------------------ what LoRA saves
@dataclass(repr=False)
class LoraSize(Table):
    """Trained weights and file sizes of LoRA against full fine-tuning, from a run of each."""

    rank: int
    unet_parameters: int
    adapter_parameters: int
    adapter_bytes: int
    full_bytes: int
    header = ("", "full fine-tuning", "LoRA")

    def rows(self) -> list[tuple]:
        share = self.adapter_parameters / self.unet_parameters
        return [("weights trained", f"{self.unet_parameters:,} (the whole UNet)",
                 f"{self.adapter_parameters:,} ({share:.1%} of it), rank {self.rank}"),
                ("what you share", f"{self.full_bytes / 2**20:.1f} MB (the whole pipeline)",
                 f"{self.adapter_bytes / 2**10:.0f} KB ({ADAPTER_FILE})")]


def lora_size(full_model: str | os.PathLike, adapters: str | os.PathLike) -> LoraSize:
    """How much LoRA trains and stores, next to a full fine-tuning output folder of the same base model."""
    from safetensors.numpy import load_file

    unet = load_file(str(Path(full_model) / "unet" / "diffusion_pytorch_model.safetensors"))
    state = load_file(str(adapter_file(adapters)))
    rank = next(v.shape[0] for k, v in state.items() if k.endswith(".lora.down.weight"))
    return LoraSize(rank, sum(int(v.size) for v in unet.values()),
                    sum(int(v.size) for k, v in state.items() if k.startswith("unet.")),
                    adapter_file(adapters).stat().st_size,
                    sum(f.stat().st_size for f in Path(full_model).rglob("*.safetensors")))


# ------------------------------------------------------------------------------ panels
class LoraTrainPanel(TrainPanel):
    """Chapter 07's training panel with a LoRA switch (on: train rank-r adapters; off: full fine-tuning) and the rank."""

    def make_fields(self, w) -> dict:
        fields = super().make_fields(w)
        slider = dict(continuous_update=False, style={"description_width": "150px"}, layout={"width": "420px"})
        fields["lora_rank"] = w.IntSlider(min=1, max=64, description="LoRA rank", **slider)
        self.use_lora = w.Checkbox(value=True, description="LoRA adapters (off: full fine-tuning)", indent=False)
        return fields

    def _build(self) -> None:
        super()._build()
        self.widget.children = (self.use_lora, *self.widget.children)

    def run_training(self, config, components, progress: bool):
        """LoRA adapters when the switch is on; full fine-tuning of the same settings (in output_dir/../full) when off."""
        if self.use_lora.value:
            return train_lora(config, components, progress=progress, on_step=self.on_step)
        from .common.config import TrainConfig
        from .train import train_dreambooth

        full = TrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})
        return train_dreambooth(full.replace(output_dir=str(Path(config.output_dir).with_name("full"))),
                                components, progress=progress, on_step=self.on_step)


class LoraGeneratePanel(GeneratePanel):
    """Chapter 07's generation panel with an adapter picker and a strength slider (the adapter merged into the base)."""

    def __init__(self, model: str | None = None, adapters: str | None = None, prompt: str | None = None):
        self.adapter_folders = {"none": None, **({"trained": str(adapters)} if adapters else {})}
        super().__init__(model, None, prompt)

    def extra_controls(self, w, style: dict) -> list:
        self.adapter = w.Dropdown(options=list(self.adapter_folders),
                                  value="trained" if len(self.adapter_folders) > 1 else "none",
                                  description="LoRA adapter", **style)
        self.strength = w.FloatSlider(1.0, min=0.0, max=2.0, step=0.25, description="adapter strength",
                                      continuous_update=False, **style)
        return [self.adapter, self.strength]

    def prepared(self, name: str):
        """The base pipeline with the chosen adapter merged at the chosen strength (or none)."""
        pipe = self.pipeline("base")
        folder = self.adapter_folders.get(self.adapter.value)
        if folder is None:
            unmerge_adapters(pipe)
        else:
            merge_adapters(pipe, folder, self.strength.value)
        return pipe


def lora_panels(config: LoraTrainConfig | None = None) -> tuple[LoraTrainPanel, LoraGeneratePanel]:
    """The training and generation panels with LoRA, sharing the adapter folder."""
    from .common.config import lora_playground_config

    train = LoraTrainPanel(config or lora_playground_config())
    return train, LoraGeneratePanel(train.config.pretrained_model_name_or_path, adapters=train.config.output_dir)

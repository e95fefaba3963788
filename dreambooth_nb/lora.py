"""Chapter 08: LoRA DreamBooth. Small adapters W + (alpha/r)·B·A on the attention projections, trained by the same
engine as full fine-tuning, saved as one small file that mindone and diffusers on PyTorch both load.

Training goes through train.engine with the LORA method: the base weights are frozen, only the adapters
(mindone's own PEFT layers, compiled on CPU like the rest) are trained and checkpointed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .common import defaults
from .common.runtime import write_in_place
from .common.config import LoraTrainConfig, names_with
from .common.files import share_modes, write_text_atomic
from .common.formats import LORA_FILES
from .common.tables import Table, measure_rows
from .models import Components
from .train.adapters import CONV_AND_LINEAR_LAYERS, has_adapter  # noqa: F401 (--lora_layers=all adds these)
from .train.engine import StableDiffusionMethod
from .widgets import GeneratePanel, TrainPanel
from .common.errors import MissingFileError

ADAPTER_FILE = LORA_FILES[0]  # the name diffusers' save_lora_weights / load_lora_weights use
UNET_TARGETS = ("to_k", "to_q", "to_v", "to_out.0", "add_k_proj", "add_v_proj")  # as mindone's reference script
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

def save_sd_adapters(components: Components, output_dir: Path, config) -> Path:
    """LoRA's result: output_dir/pytorch_lora_weights.safetensors (diffusers key names) and the settings beside it."""
    from mindone.diffusers import StableDiffusionPipeline

    return save_adapters(StableDiffusionPipeline, {"unet": components.unet, "text_encoder": components.text_encoder},
                         output_dir, config)


# LoRA DreamBooth on Stable Diffusion: rank --lora_rank adapters on the UNet's attention (and the text encoder's with
# --train_text_encoder), nothing else trains; a checkpoint and the result hold the adapters only (a few MB)
LORA = StableDiffusionMethod(
    LoraTrainConfig, "LoRA DreamBooth with MindSpore + mindone; flags match mindone's train_dreambooth_lora.py.",
    "adapters", (("unet", UNET_TARGETS), ("text_encoder", TEXT_TARGETS)), save_sd_adapters)


def adapter_state(net) -> dict:
    """A network's adapter weights with diffusers' key names ('...to_q.lora.down.weight'), or all with peft's
    ('...conv1.lora_A.weight') when diffusers has no name for one of its layers (adapters on convolutions): mindone's
    and diffusers' loaders read a file in one naming or the other, and of a file mixing both they load only the peft
    names, leaving the other adapters at their initial values without a word."""
    from mindone.diffusers._peft.utils import get_peft_model_state_dict
    from mindone.diffusers.utils import convert_state_dict_to_diffusers

    peft_named = get_peft_model_state_dict(net)
    diffusers_named = convert_state_dict_to_diffusers(peft_named)
    return peft_named if any(key.endswith(PEFT_MATRIX_NAMES) for key in diffusers_named) else diffusers_named


def save_adapters(pipeline_class, nets: dict, output_dir: Path, config) -> Path:
    """Write the adapter file of `nets` ({'unet': ..., 'text_encoder': ..., 'text_encoder_2': ...}; a network without
    adapters is left out) as pipeline_class.save_lora_weights names its keys, with the settings beside it; each file
    is written whole, then renamed into place."""
    from .common.cards import shareable_settings

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tmp = output_dir / f".lora.tmp-{os.getpid()}"
    layers = {f"{name}_lora_layers": adapter_state(net) if has_adapter(net) else None for name, net in nets.items()}
    pipeline_class.save_lora_weights(str(tmp), **layers)
    write_text_atomic(tmp / "train_config.json", json.dumps(shareable_settings(config), indent=1))
    for part in tmp.iterdir():
        os.replace(part, output_dir / part.name)
    tmp.rmdir()
    return share_modes(output_dir / ADAPTER_FILE)


# ------------------------------------------------------------------------------ training
def train_lora(config: LoraTrainConfig, components: Components | None = None, progress: bool = True, on_step=None):
    """LoRA DreamBooth on the training engine; returns its TrainResult (the adapter file in config.output_dir)."""
    from .train.engine import train_dreambooth

    return train_dreambooth(config, components, progress, on_step, method=LORA)


# ------------------------------------------------------------------------------ inference
def adapter_file(folder: str | os.PathLike) -> Path:
    """The adapter file of a LoRA output folder (or the file itself)."""
    path = Path(folder)
    path = path / ADAPTER_FILE if path.is_dir() else path
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist: give the output folder of a LoRA run "
                                f"(python -m dreambooth_nb.train_lora) or its {ADAPTER_FILE}.")
    return path


def lora_pipeline(base: str | None, adapters: str | os.PathLike):
    """A pipeline of the base model with the adapters loaded by mindone's load_lora_weights, before its first
    compile (the guide's way; the adapters' strength is then fixed at 1: use merge_adapters for a slider)."""
    from .infer import load_pipeline

    pipe = load_pipeline(base or defaults.DEFAULT_MODEL)
    load_adapters(pipe, adapters)
    return pipe


def load_adapters(pipe, adapters: str | os.PathLike) -> None:
    """The guide's `pipe.load_lora_weights(folder)`, with the file named: mindone's and diffusers' loaders refuse a
    folder without `weight_name` when HF_HUB_OFFLINE is set. Works for SD and SDXL pipelines."""
    path = adapter_file(adapters)
    pipe.load_lora_weights(str(path.parent), weight_name=path.name)


# How a LoRA file names an adapted layer's two matrices (down, up): diffusers' <layer>.lora.down/up.weight in the UNet,
# <layer>.lora_linear_layer.down/up.weight in the text encoders, and peft's <layer>.lora_A/lora_B.weight, which
# diffusers' key conversion leaves on every layer it has no name for (convolutions' adapters)
ADAPTER_MATRIX_NAMES = ((".lora.down.weight", ".lora.up.weight"),
                        (".lora_linear_layer.down.weight", ".lora_linear_layer.up.weight"),
                        (".lora_A.weight", ".lora_B.weight"))
PEFT_MATRIX_NAMES = ADAPTER_MATRIX_NAMES[-1]


def adapter_updates(adapters: str | os.PathLike, prefix: str = "unet.") -> dict[str, np.ndarray]:
    """{weight name: (alpha/r)·B·A} for every adapted weight of one network (the change LoRA makes to W; a
    convolution's adapter, a k x k convolution to r channels then a 1 x 1 one, gives a k x k update)."""
    from safetensors.numpy import load_file

    state = load_file(str(adapter_file(adapters)))
    updates = {}
    for key, down in state.items():
        names = next((pair for pair in ADAPTER_MATRIX_NAMES if key.endswith(pair[0])), None)
        if key.startswith(prefix) and names is not None:
            layer = key[:-len(names[0])]  # prefix + the adapted layer's name
            up, rank = state[layer + names[1]], down.shape[0]
            alpha = float(state.get(layer + ".alpha", rank))
            updates[layer[len(prefix):] + ".weight"] = (alpha / rank) * (
                up.reshape(up.shape[0], -1) @ down.reshape(rank, -1)).reshape(up.shape[:1] + down.shape[1:])
    return updates


# A pipeline's weights as they were before merge_adapters changed them, kept here (weak keys), not on the pipeline.
_BASE_WEIGHTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def adapted_networks(pipe) -> dict:
    """{key prefix in the adapter file: network} for every network of the pipeline an adapter file may change
    (SDXL's second text encoder included)."""
    nets = {"unet.": pipe.unet, "text_encoder.": pipe.text_encoder,
            "text_encoder_2.": getattr(pipe, "text_encoder_2", None)}
    return {prefix: net for prefix, net in nets.items() if net is not None}


def merge_adapters(pipe, adapters: str | os.PathLike, strength: float = 1.0) -> int:
    """Put W + strength·(alpha/r)·B·A into the pipeline's own weights (as fuse_lora does); returns how many weights
    changed. The compiled sampler stays as it is, so a new strength costs nothing: call it again, or unmerge."""
    unmerge_adapters(pipe)
    base = _BASE_WEIGHTS.setdefault(pipe, {})
    count = 0
    for prefix, net in adapted_networks(pipe).items():
        params = dict(net.parameters_and_names())
        for name, update in adapter_updates(adapters, prefix).items():
            param = params[name]
            base[(prefix, name)] = param.asnumpy().copy()
            write_in_place(param, base[(prefix, name)] + strength * update)
            count += 1
    return count


def unmerge_adapters(pipe) -> None:
    """Give the pipeline its base weights back."""
    base = _BASE_WEIGHTS.get(pipe, {})
    nets = adapted_networks(pipe)
    for (prefix, name), value in base.items():
        param = dict(nets[prefix].parameters_and_names())[name]
        write_in_place(param, value)
    base.clear()


def adapter_scores(pipe, adapters: str | os.PathLike, seed: int = 0) -> dict:
    """The toy world's DreamBooth scores (chapter 06) of `pipe`, the base model the adapters were trained on, with them
    merged in (and taken out again): judged once per seed, profile and adapter file, and kept in the adapters' folder
    with the judged pictures, so a later chapter or a rerun reads them back instead of compiling and drawing again."""
    from .toyworld.experiments import judging_stamp, kept_scores, toy_dreambooth_scores

    def judge() -> dict:
        merge_adapters(pipe, adapters)
        try:
            return toy_dreambooth_scores(pipe, seed)
        finally:
            unmerge_adapters(pipe)

    return kept_scores(Path(adapters), judge, judging_stamp(seed, adapter_file(adapters)))


def strength_grid(pipe, adapters, prompts: list[str], strengths=(0.0, 0.25, 0.5, 0.75, 1.0, 1.5), seed: int = 0):
    """One row per prompt, one column per adapter strength (merged weights, the same seed); returns the figure."""
    from .common.viz import show_images
    from .sampling import generate

    images, titles = [], []
    for prompt in prompts:
        for strength in strengths:
            merge_adapters(pipe, adapters, strength)
            images += generate(pipe, [prompt], [seed])  # the sampler's usual batch: no compile of its own
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
    rank = next(v.shape[0] for k, v in state.items() if k.endswith(tuple(down for down, _ in ADAPTER_MATRIX_NAMES)))
    return LoraSize(rank, sum(int(v.size) for v in unet.values()), sum(int(v.size) for v in state.values()),
                    adapter_file(adapters).stat().st_size,
                    pipeline_bytes(full_model))


def pipeline_bytes(folder: str | os.PathLike) -> int:
    """Bytes of the weights a saved pipeline shares: its networks' safetensors, not the checkpoints or earlier runs
    kept beside them."""
    import json

    parts = [name for name, value in json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8")).items()
             if isinstance(value, list)]
    return sum(f.stat().st_size for name in parts for f in (Path(folder) / name).glob("*.safetensors"))


# ------------------------------------------------------------------------------ full fine-tuning against LoRA
def full_config_of(config: LoraTrainConfig) -> "TrainConfig":
    """The same run as full fine-tuning, written beside the LoRA output: every shared setting kept but the learning
    rate, LORA_LR_FACTOR times lower (full fine-tuning moves every weight from where it is)."""
    from .common.config import LORA_LR_FACTOR, TrainConfig

    full = TrainConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})
    return full.replace(output_dir=str(Path(config.output_dir).with_name("full")),
                        learning_rate=config.learning_rate / LORA_LR_FACTOR)


@dataclass(repr=False)
class MethodComparison(Table):
    """Full fine-tuning and LoRA trained with the same settings, each by its command line in a fresh process,
    judged on the same prompts and seeds."""

    measures: dict  # method name -> {measure: value}
    seed: int = 0  # the seed both were judged with
    header = ("", "full fine-tuning", "LoRA")

    ROWS = (("subject fidelity", "`a photo of sks star` judged the subject", "{:.0%}"),
            ("recontext", "subject kept in a new context, context right", "{:.0%}"),
            ("class kept", "`a photo of a star` stays a plain star", "{:.0%}"),
            ("median_step_s", "seconds per step (median; CPU)", "{:.3f}"),
            ("first_step_s", "first step (compiles)", "{:.1f} s"),
            ("peak_rss_mb", "peak memory of the training process", "{:.0f} MB"),
            ("trained", "weights trained", "{:,}"),
            ("file_mb", "what you share", "{:.2f} MB"))

    def rows(self) -> list[tuple]:
        return measure_rows(self.ROWS, [self.measures["full"], self.measures["lora"]])


def compare_methods(config: LoraTrainConfig, *, pipe=None, seed: int = 0) -> MethodComparison:
    """Train full fine-tuning and LoRA with the same settings (each command in a fresh process, so step time and
    memory are its own), then judge both on the toy world's prompts with the same seeds.

    pipe: a pipeline of the base model to judge with (its weights are swapped, and restored even when judging
    fails: one compiled sampler serves every model); None loads one."""
    from .common.assets import resolve_model
    from .infer import load_pipeline, swap_weights
    from .toyworld.experiments import toy_dreambooth_scores
    from .train.cli import run_in_fresh_process

    full = full_config_of(config)
    measures = {"full": run_in_fresh_process(full), "lora": run_in_fresh_process(config)}
    pipe = pipe if pipe is not None else load_pipeline(config.pretrained_model_name_or_path)
    try:
        measures["lora"].update(adapter_scores(pipe, config.output_dir, seed))
        swap_weights(pipe, full.output_dir)
        measures["full"].update(toy_dreambooth_scores(pipe, seed))
    finally:
        unmerge_adapters(pipe)
        swap_weights(pipe, resolve_model(config.pretrained_model_name_or_path))
    size = lora_size(full.output_dir, config.output_dir)
    measures["full"].update(trained=size.unet_parameters, file_mb=size.full_bytes / 2**20)
    measures["lora"].update(trained=size.adapter_parameters, file_mb=size.adapter_bytes / 2**20)
    return MethodComparison(measures, seed)


def finished_run_of(config: LoraTrainConfig) -> bool:
    """True when config.output_dir holds the adapters of a finished run with this config's main settings."""
    saved = Path(config.output_dir) / "train_config.json"
    if not ((Path(config.output_dir) / ADAPTER_FILE).is_file() and saved.is_file()):
        return False
    settings = json.loads(saved.read_text(encoding="utf-8"))
    same_run = (*names_with(config, "resume_must_match"), "max_train_steps")  # what a resume keeps, and the length
    return all(settings.get(k) == getattr(config, k) for k in same_run)


def rank_sweep(config: LoraTrainConfig, ranks=(1, 4, 16), *, pipe=None, seed: int = 0) -> "RankSweep":
    """LoRA at several ranks, same settings otherwise: judged scores and adapter size per rank. The run of
    config.output_dir serves its own rank when it finished (compare_methods trained and judged it: its kept scores are
    read back, see adapter_scores). The other ranks train in this process:
    side by side in fresh processes they took as long on 2 cores and held more memory at once. pipe: a pipeline of
    the base model to judge with (adapters merged in and taken out again); None loads one."""
    from .infer import load_pipeline

    pipe, results = pipe if pipe is not None else load_pipeline(config.pretrained_model_name_or_path), {}
    for rank in ranks:
        run = config.replace(lora_rank=rank, output_dir=str(Path(config.output_dir).with_name(f"rank-{rank}")))
        if finished_run_of(config) and rank == config.lora_rank:
            run = config
        else:
            train_lora(run)
        scores = adapter_scores(pipe, run.output_dir, seed)
        results[rank] = {k: scores[k] for k in RankSweep.SCORES}
        results[rank]["file_kb"] = adapter_file(run.output_dir).stat().st_size / 2**10
    return RankSweep(results)


@dataclass(repr=False)
class RankSweep(Table):
    """Scores and adapter size per LoRA rank."""

    results: dict  # rank -> {score: share, "file_kb": size}
    SCORES = ("subject fidelity", "recontext", "class kept")
    header = ("rank", *SCORES, "adapter file")

    def rows(self) -> list[tuple]:
        return [(rank, *(f"{r[k]:.0%}" for k in self.SCORES), f"{r['file_kb']:.0f} KB") for rank, r in self.results.items()]


# ------------------------------------------------------------------------------ panels
LAYER_CHOICES = (("attention (the reference's)", ""), ("every layer (--lora_layers=all)", "all"))  # (label, flag)


class LoraTrainPanel(TrainPanel):
    """Chapter 07's training panel with a LoRA switch (on: train rank-r adapters; off: full fine-tuning), the rank, and
    where the adapters go (--lora_layers: the reference's attention layers, or every layer)."""

    def make_fields(self, w) -> dict:
        fields = super().make_fields(w)
        slider = dict(continuous_update=False, style={"description_width": "150px"}, layout={"width": "420px"})
        fields["lora_rank"] = w.IntSlider(min=1, max=64, description="LoRA rank", **slider)
        fields["lora_layers"] = w.Dropdown(options=LAYER_CHOICES, description="LoRA layers",
                                          style=slider["style"], layout=slider["layout"])
        self.use_lora = w.Checkbox(value=True, description="LoRA adapters (off: full fine-tuning)", indent=False)
        return fields

    def _widget_value(self, name: str):
        if name == "lora_layers":  # a list of names typed on the command line shows as the nearest choice
            return "all" if self.config.lora_layers == "all" else ""
        return super()._widget_value(name)

    def form(self) -> dict:
        """The settings the widgets show now; the attention choice is the flag left out (None), or the config's own list
        of layer names while the choice was never changed to every layer."""
        values = super().form()
        if not values["lora_layers"]:
            values["lora_layers"] = None if self.config.lora_layers == "all" else self.config.lora_layers
        return values

    def _build(self) -> None:
        super()._build()
        self.widget.children = (self.use_lora, *self.widget.children)

    def run_training(self, config, components, progress: bool):
        """LoRA adapters when the switch is on; full fine-tuning of the same settings (in output_dir/../full) when off."""
        if self.use_lora.value:
            return train_lora(config, components, progress=progress, on_step=self.on_step)
        from .train import train_dreambooth

        return train_dreambooth(full_config_of(config), components, progress=progress, on_step=self.on_step)


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

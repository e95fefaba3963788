"""Chapter 04: the training engine: the compiled step, the loop around it, checkpoints, and the saved result."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..batches import BatchMaker, latent_shape
from ..common import defaults, runtime
from ..common.cards import shareable_settings, write_run_card
from ..common.commands import signals_deferred
from ..common.config import TrainConfig, names_with
from ..common.errors import InputError, UserError
from ..common.graph_cache import cached_compile, network_signature
from ..common.tables import Table
from ..common.waits import said_wait
from ..common.world import World, barrier, current_world
from ..losses import loss_network
from ..models import Components, load_components, model_resolution, vae_factor
from ..prior import load_training_data
from ..sampling import save_pipeline
from . import checkpoint as ckpt
from .distributed import DIGEST_DIR, grad_reducer
from .output import RunLock, bytes_needed, check_writable, keep_earlier_run, remove_stale_temporaries
from .adapters import add_adapters, check_targets, chosen_layers, names_layers
from .method import TrainingMethod, missing_hooks
from .step import adamw, lr_schedule


@dataclass(repr=False)
class TrainResult(Table):
    """What a training run leaves: where the model is, the losses of every step, checkpoints and validation images.

    history holds one record per optimizer step: {"step", "loss", "instance_loss", "prior_loss", "lr"}, plus
    "val_loss", "val_instance_loss", "val_prior_loss" at validation steps (fixed noise and timesteps).
    """

    output_dir: Path
    history: list = field(default_factory=list)
    steps: int = 0
    interrupted: bool = False
    resumed_from: Path | None = None
    checkpoints: list = field(default_factory=list)
    validation: dict = field(default_factory=dict)  # step -> saved image paths
    step_seconds: list = field(default_factory=list)  # wall time of each step run here (the first compiles)

    def losses(self, term: str = "loss") -> list[float]:
        """One term of every step: "loss" (the total), "instance_loss" or "prior_loss"."""
        return [record.get(term) for record in self.history]

    def recent(self, term: str = "loss", share: float = 0.2) -> float | None:
        """The mean of a term over the last `share` of the steps (one step's loss is mostly noise from its timestep)."""
        values = [v for v in self.losses(term)[-max(1, math.ceil(len(self.history) * share)):] if v is not None]
        return float(np.mean(values)) if values else None

    def plot(self, ax=None):
        from ..common.viz import plot_loss

        return plot_loss(self.history, ax)

    def rows(self) -> list[tuple[str, str]]:
        times = self.step_seconds
        with_prior = any(r.get("prior_loss") for r in self.history)
        shown = ("instance_loss", "prior_loss") if with_prior else ("loss",)
        rows = [("output_dir", str(self.output_dir)), ("steps done", str(self.steps)),
                ("stopped early", "yes (interrupted)" if self.interrupted else "no"),
                ("resumed from", self.resumed_from.name if self.resumed_from else "-")]
        rows += [(f"{term.replace('_', ' ')}, mean of the last 20 %", f"{self.recent(term):.4f}")
                 for term in shown if self.recent(term) is not None]
        rows += [("checkpoints written", ", ".join(p.name for p in self.checkpoints) or "-")]
        if times:
            rows.append(("first step (compiles)", f"{times[0]:.1f} s"))
        if len(times) > 1:
            rows.append(("later steps (median)", f"{float(np.median(times[1:])):.2f} s"))
        return rows


# ------------------------------------------------------------------------- optimizer and lr
def make_optimizer(params, lr_schedule: list[float], config: TrainConfig):
    """AdamW with the adam_* flags, reading its learning rate from the per-step schedule."""
    return adamw(params, lr_schedule, config.adam_weight_decay, config.adam_beta1, config.adam_beta2, config.adam_epsilon)


# ------------------------------------------------------------------------------ steps
def total_steps(config: TrainConfig, num_images: int, world: int = 1) -> int:
    """max_train_steps, or the epochs' worth of optimizer steps (full batches only)."""
    if config.max_train_steps:
        return config.max_train_steps
    per_epoch = math.ceil(num_images / (config.train_batch_size * world * config.gradient_accumulation_steps))
    return config.num_train_epochs * max(per_epoch, 1)


# --------------------------------------------------------------------------------- setup
def freeze(net) -> None:
    """Stop a network from training (no gradients, eval mode)."""
    if net is None:
        return
    net.set_train(False)
    for p in net.get_parameters():
        p.requires_grad = False


def text_embeddings(components: Components, image_sets, use_mask: bool) -> tuple:
    """The frozen text encoder's output for each set's prompt (pre_compute_text_embeddings), as NumPy arrays."""
    import mindspore as ms

    out = []
    for images in image_sets:
        mask = ms.Tensor(images.attention_mask) if use_mask else None
        out.append(components.text_encoder(ms.Tensor(images.input_ids), attention_mask=mask)[0].asnumpy())
    return tuple(out)


# ------------------------------------------------------------------------- devices and precision
@dataclass(frozen=True)
class Precision:
    """Compute dtype for the networks and the static loss scale (fp16 needs one), or fp32."""

    dtype: str | None = None  # "float16", "bfloat16", or None for float32
    loss_scale: float = 1.0


def precision_for(mixed_precision: str | None, device: str) -> Precision:
    """fp16/bf16 on Ascend (and GPU) as the reference script does; fp32 on CPU, with a one-line warning."""
    if mixed_precision in (None, "no"):
        return Precision()
    if device == "CPU":
        warn(f"--mixed_precision={mixed_precision} needs an Ascend NPU; training in fp32 on CPU.")
        return Precision()
    if mixed_precision == "fp16":
        return Precision("float16", 65536.0)  # the reference's StaticLossScaler(65536)
    return Precision("bfloat16")


def apply_precision(components: Components, precision: Precision, train_text_encoder: bool) -> None:
    """As the reference: frozen networks stored in the compute dtype; trained ones keep fp32 weights and compute in it."""
    if precision.dtype is None:
        return
    import mindspore as ms

    dtype = getattr(ms, precision.dtype)
    if components.vae is not None:
        components.vae.to(dtype)
    components.unet.to_float(dtype)
    if train_text_encoder:
        components.text_encoder.to_float(dtype)
    else:
        components.text_encoder.to(dtype)


def use_data_sink(requested: bool, device: str) -> bool:
    """MindSpore data sinking works on Ascend only: warn and feed batches from the host elsewhere."""
    if requested and device != "Ascend":
        warn(f"--enable_mindspore_data_sink works on Ascend only; ignored on {device}.")
        return False
    return requested


# --------------------------------------------------------------------------------- the trainer
@dataclass
class Trainer:
    """The compiled cells of one run, the optimizer they update and the networks being trained."""

    step_cell: object
    apply_cell: object | None
    optimizer: object
    schedule: list
    nets: dict  # folder name in checkpoints -> trained network
    accumulation: int = 1
    sink: Callable | None = None
    terms: tuple = ("loss", "instance_loss", "prior_loss")  # names of what the step returns, the loss first
    whole_networks: bool = True  # checkpoints hold the whole trained networks (False: only the trained weights)
    warm: bool = False  # its graph compiled (the first step ran)

    def optimizer_steps(self) -> int:
        """Updates applied so far (the optimizer's own counter, also the lr schedule's position)."""
        return int(self.optimizer.global_step.asnumpy().reshape(-1)[0])

    def run(self, make_batch: BatchMaker, step: int) -> dict[str, float]:
        """One optimizer step: `accumulation` micro-batches, then the update; returns each term's mean ({"loss": ...})."""
        import mindspore as ms

        values = []
        for micro in range(self.accumulation):
            if self.sink is not None:
                outputs = self.sink()
            else:
                outputs = self.step_cell(*[ms.Tensor(x) for x in make_batch(step * self.accumulation + micro)])
            values.append([float(v.asnumpy()) for v in outputs])
        if self.apply_cell is not None:
            self.apply_cell()
        return dict(zip(self.terms, (float(v) for v in np.mean(values, axis=0))))

    def reset(self) -> None:
        """Forget the optimizer's state (moments, step) and any accumulated gradients: a fresh start, same graph."""
        buffer = getattr(self.step_cell, "buffer", None) or ()
        for p in (*self.optimizer.moments1, *self.optimizer.moments2, *buffer, self.optimizer.global_step):
            runtime.write_in_place(p, np.zeros(p.shape))


# ------------------------------------------------------------------ what every method shares (done once, here)
NETWORK_NAMES = ("text_encoder", "text_encoder_2", "vae", "unet")  # every network a Components may hold


def prepare_networks(config: TrainConfig, method: TrainingMethod, components) -> dict:
    """The networks the method trains, ready: every other network frozen, train mode on, adapters added (rank
    --lora_rank) where the method names targets, only what trains trainable, and --gradient_checkpointing applied."""
    nets = method.trained_networks(config, components)
    for name in NETWORK_NAMES:
        if name not in nets:
            freeze(getattr(components, name, None))
    for name, net in nets.items():
        net.set_train(True)
        targets = method.adapter_targets(config, name)
        for p in net.get_parameters():
            p.requires_grad = targets is None
        if targets is not None:
            if name == "unet" and names_layers(config):
                check_targets(net, name, targets)
            add_adapters(net, name, targets, config.lora_rank)
    if config.gradient_checkpointing:
        recompute_activations(nets)
    return nets


def recompute_activations(nets: dict) -> None:
    """Gradient checkpointing: the UNet's own switch; each text encoder layer recomputed with MindSpore's (mindone
    0.3.0's CLIP has no switch)."""
    for name, net in nets.items():
        if name == "unet":
            net.enable_gradient_checkpointing()
        elif name.startswith("text_encoder"):
            for layer in net.text_model.encoder.layers:
                layer.recompute()


def with_validation_steps(config: TrainConfig, photos: int) -> TrainConfig:
    """--validation_epochs (the LoRA scripts' flag) as --validation_steps: an epoch is every instance photo (times
    --repeats) once, or every class image when there are more; unchanged for a config without that flag."""
    epochs = getattr(config, "validation_epochs", None)
    if epochs is None:
        return config
    examples = max(photos * getattr(config, "repeats", 1),
                   config.num_class_images if config.with_prior_preservation else 0, 1)
    per_step = config.train_batch_size * config.gradient_accumulation_steps
    return config.replace(validation_steps=epochs * max(1, math.ceil(examples / per_step)))


# ------------------------------------------------------------------ Stable Diffusion's hooks (full fine-tuning, LoRA)
def sd_networks(config: TrainConfig, components: Components) -> dict:
    """The UNet, and the text encoder with --train_text_encoder."""
    nets = {"unet": components.unet}
    if config.train_text_encoder:
        nets["text_encoder"] = components.text_encoder
    return nets


def sd_embeddings(config: TrainConfig, components: Components, image_sets) -> tuple | None:
    """The frozen text encoder's output for each prompt when --pre_compute_text_embeddings, else None."""
    if not config.pre_compute_text_embeddings:
        return None
    return text_embeddings(components, image_sets, config.text_encoder_use_attention_mask)


def sd_batches(config: TrainConfig, components: Components, instance, classes, seed: int, world: World,
               embeddings) -> BatchMaker:
    """Every step's inputs, made on the host from (seed, step)."""
    return BatchMaker(instance, classes, config, latent_shape(components, config.resolution),
                      components.noise_scheduler.config.num_train_timesteps, seed, world.rank, world.size, embeddings)


def sd_pipeline(components: Components, scheduler: str | None = None):
    """A sampling pipeline sharing the networks being trained (validation images, class images)."""
    from ..sampling import pipeline_from_components

    return pipeline_from_components(components, scheduler)


def trainable_weights(nets: dict) -> list:
    """Every trainable weight of the networks (one parameter group, one learning rate)."""
    return [p for net in nets.values() for p in net.trainable_params()]


def load_sd(config: TrainConfig) -> Components:
    """The model's pieces, from the config's model name or folder."""
    return load_components(config.pretrained_model_name_or_path, config.revision, config.variant, config.tokenizer_name)


def save_whole_pipeline(components: Components, output_dir: Path, config: TrainConfig) -> Path:
    """Full fine-tuning's result: the whole pipeline in diffusers layout (without the text encoder on request)."""
    return save_pipeline(components, output_dir, config, config.skip_save_text_encoder)


@dataclass(frozen=True)
class StableDiffusionMethod:
    """A TrainingMethod (train.method) for Stable Diffusion 1.x/2.x: full fine-tuning (train_dreambooth.py, below) or
    LoRA (train_dreambooth_lora.py, chapter 08's lora.LORA). Both load the same pieces and train them with the same
    loss and batches; they differ in their settings, in which layers train (`targets`: adapters on these layers of
    these networks; empty: every weight) and in what is saved."""

    config_class: type
    description: str
    result_kind: str  # "pipeline" or "adapters"
    targets: tuple = ()  # ((network name, (layer names, ...)), ...)
    save: Callable = save_whole_pipeline

    @property
    def command(self) -> str:
        return self.config_class.COMMAND

    def load(self, config: TrainConfig) -> Components:
        return load_sd(config)

    def trained_networks(self, config: TrainConfig, components: Components) -> dict:
        return sd_networks(config, components)

    def adapter_targets(self, config: TrainConfig, name: str) -> tuple | None:
        if not self.targets:
            return None
        targets = dict(self.targets).get(name)
        return chosen_layers(config.lora_layers, targets) if name == "unet" and targets else targets

    def parameters(self, config: TrainConfig, nets: dict, schedule: list):
        return trainable_weights(nets)

    def loss(self, config: TrainConfig, components: Components, precomputed: bool):
        return loss_network(config, components, precomputed)

    def embeddings(self, config: TrainConfig, components: Components, image_sets) -> tuple | None:
        return sd_embeddings(config, components, image_sets)

    def batches(self, config: TrainConfig, components: Components, instance, classes, seed: int, world: World,
                embeddings) -> BatchMaker:
        return sd_batches(config, components, instance, classes, seed, world, embeddings)

    def pipeline(self, components: Components, scheduler: str | None = None):
        return sd_pipeline(components, scheduler)

    def save_result(self, components: Components, output_dir: Path, config: TrainConfig) -> Path:
        return self.save(components, output_dir, config)


# every weight of the UNet (and of the text encoder when asked) trains; the whole pipeline is saved
FULL_FINE_TUNING = StableDiffusionMethod(
    TrainConfig, "DreamBooth fine-tuning with MindSpore + mindone; flags match mindone's train_dreambooth.py.",
    "pipeline")


def check_method(method) -> TrainingMethod:
    """The method, when it provides every hook of TrainingMethod; TypeError naming what it lacks otherwise."""
    missing = missing_hooks(method)
    if missing:
        raise TypeError(f"{type(method).__name__} is not a complete training method: it lacks {', '.join(missing)} "
                        f"(see dreambooth_nb/train/method.py)")
    return method


_LAST_TRAINER: dict = {}  # the last run's trainer and what it was built for (trainer_for)


def trainer_for(config: TrainConfig, components: Components, steps: int, world: World = World(),
                precision: Precision = Precision(), method: TrainingMethod = FULL_FINE_TUNING) -> Trainer:
    """The last run's trainer, reset, when only graph-neutral settings changed (no second ~20 s compile); else a new one.

    Reuse needs the same networks (the same `components` object): its weights are trained further
    from where they are, as a new trainer would to float rounding (measured: a full fine-tuning run of the tiny model
    repeated on a reused trainer, the same weights put back first, first differed in the last bit of a gradient at its
    third step and by 3e-5 in a weight after six; a resumed run, whose optimizer state comes from the checkpoint,
    matched bit for bit).
    """
    neutral = names_with(config, "graph_neutral")  # settings that never change the compiled step
    settings = tuple((f.name, getattr(config, f.name)) for f in dataclasses.fields(config) if f.name not in neutral)
    key = (id(components.unet), id(components.text_encoder), id(components.vae), steps, world, precision, method,
           settings)
    if _LAST_TRAINER.get("key") == key:
        trainer = _LAST_TRAINER["trainer"]
        prepare_networks(config, method, components)
        trainer.reset()
        return trainer
    _LAST_TRAINER.clear()  # let the previous graph and optimizer state go before building the next
    trainer = build_trainer(config, components, steps, world, precision, method)
    _LAST_TRAINER.update(key=key, trainer=trainer)
    return trainer


def build_trainer(config: TrainConfig, components: Components, steps: int, world: World = World(),
                  precision: Precision = Precision(), method: TrainingMethod = FULL_FINE_TUNING) -> Trainer:
    """The compiled step (and accumulation) cells, the optimizer and its lr schedule for this run."""
    from .step import make_step

    nets = prepare_networks(config, method, components)
    schedule = lr_schedule(config, steps, world.size)
    optimizer = make_optimizer(method.parameters(config, nets, schedule), schedule, config)
    step_cell, apply_cell = make_step(
        method.loss(config, components, config.pre_compute_text_embeddings), optimizer, config.max_grad_norm,
        config.gradient_accumulation_steps, grad_reducer(optimizer.parameters, world), precision.loss_scale)
    return Trainer(step_cell, apply_cell, optimizer, schedule, nets, config.gradient_accumulation_steps,
                   whole_networks=method.result_kind == "pipeline")


def sink_feed(step_cell, make_batch: BatchMaker, first: int, count: int):
    """A data-sink callable (Ascend) that feeds micro-batches first, first+1, ... to the step cell."""
    import mindspore as ms
    from mindspore.dataset import GeneratorDataset

    class Source:
        def __len__(self):
            return count

        def __getitem__(self, i):
            return make_batch(first + i)

    names = [f"input_{i}" for i in range(len(make_batch(first)))]  # 6 for Stable Diffusion, 7 for SDXL
    return ms.data_sink(step_cell, GeneratorDataset(Source(), column_names=names, shuffle=False), sink_size=1)


# ------------------------------------------------------------------------------ the loop
def train_dreambooth(config: TrainConfig, components: Components | None = None, progress: bool = True,
                     on_step: Callable[[list], None] | None = None, method=None) -> TrainResult:
    """Fine-tune with DreamBooth as `config` says; returns the loss history and where the model went.

    on_step(history) is called after every optimizer step (a LivePlot, for example); raising
    KeyboardInterrupt there (or pressing Stop / Ctrl-C) ends training with a checkpoint written.
    The output folder is locked for the run: a second run on it stops at once. `method` says what is trained
    and saved (a train.method.TrainingMethod): full fine-tuning (the default) or LoRA adapters (chapter 08's lora.LORA).
    """
    if not isinstance(config, TrainConfig):
        raise InputError(f"train_dreambooth takes a TrainConfig, not {type(config).__name__} {config!r}: build one "
                         f"with db.tutorial_config(output_dir=...) or db.TrainConfig(...), then pass it.")
    config.validate()
    config = config.replace(seed=config.seed_used)  # every file of the run records the seed it used
    device = runtime.ensure_setup().device
    check_memory_efficient_attention(config, device)
    world = current_world(config.distributed)
    output_dir = Path(config.output_dir)
    lock = RunLock.acquire(output_dir) if world.main else None
    try:
        return train_locked(config, components, progress, on_step, device, world, check_method(method or FULL_FINE_TUNING))
    finally:
        if lock is not None:
            lock.release()


def train_locked(config: TrainConfig, components: Components | None, progress: bool, on_step, device: str,
                 world: World, method) -> TrainResult:
    """train_dreambooth, once the output folder is this run's."""
    output_dir = Path(config.output_dir)
    if world.main:
        check_writable(output_dir, 0)
        remove_stale_temporaries(output_dir)
    runtime.seed_everything(config.seed)
    components = components or method.load(config)
    use_memory_efficient_attention(config, components)
    check_resolution(config.resolution, components)
    precision = precision_for(config.mixed_precision, device)
    sink = use_data_sink(config.enable_mindspore_data_sink, device)
    set_sample_size(components, config.resolution)
    if world.main:
        for note in prompt_notes(config, components.tokenizer):
            warn(note)
    instance, classes = load_training_data(config, components, world, method.pipeline)
    config = with_validation_steps(config, len(instance))
    report_photos([s for s in (instance, classes) if s is not None], config.resolution, world)
    steps = total_steps(config, len(instance), world.size)
    embeddings = method.embeddings(config, components, [s for s in (instance, classes) if s is not None])
    apply_precision(components, precision, config.train_text_encoder)
    trainer = trainer_for(config, components, steps, world, precision, method)
    if world.main:
        check_writable(output_dir, room_needed(config, components, trainer, steps))
    make_batch = method.batches(config, components, instance, classes, config.seed, world, embeddings)
    result = resume(config, trainer, world)
    if sink:
        trainer.sink = sink_feed(trainer.step_cell, make_batch, result.steps * trainer.accumulation,
                                 (steps - result.steps) * trainer.accumulation)
    run = Run(config, components, trainer, make_batch, steps, result, world,
              open_metrics(config, world, result.steps), device, method)
    try:
        with signals_deferred() as stop_requested:
            validate_before_training(run)
            run_loop(run, progress, on_step, stop_requested)
    finally:
        run.log.close()
    if world.main:
        require_finite_weights(run, "the final model")
        method.save_result(components, result.output_dir, config)
        save_samples_grid(result.output_dir)
        write_run_card(result.output_dir, config, result.history, steps_done=result.steps, device=device, seed=config.seed)
        write_resources(result)
        (result.output_dir / "error.log").unlink(missing_ok=True)  # an earlier failure's log, now out of date
    if world.size > 1:
        write_digest(result.output_dir, world, trainer.nets)
    return result


RESOURCES_FILE = "resources.json"


def write_resources(result: TrainResult) -> Path:
    """output_dir/resources.json: step times of this process (the first compiles) and its peak memory so far."""
    from ..common.files import write_json_atomic

    times = result.step_seconds
    return write_json_atomic(result.output_dir / RESOURCES_FILE, {
        "steps_here": len(times), "first_step_s": times[0] if times else None,
        "median_step_s": float(np.median(times[1:])) if len(times) > 1 else None,
        "peak_rss_mb": runtime.peak_rss_mb()})


def check_memory_efficient_attention(config: TrainConfig, device: str) -> None:
    """--enable_xformers_memory_efficient_attention needs Ascend: mindone maps it to the NPU's flash attention."""
    if config.enable_xformers_memory_efficient_attention and device != "Ascend":
        raise InputError(f"--enable_xformers_memory_efficient_attention: mindone maps it to Ascend's flash attention "
                         f"(FlashAttentionScore), which has no {device} kernel; remove the flag on {device}.")


def use_memory_efficient_attention(config: TrainConfig, components: Components) -> None:
    """Switch the UNet's attention to mindone's flash attention when asked (on Ascend; checked before)."""
    if config.enable_xformers_memory_efficient_attention:
        components.unet.enable_xformers_memory_efficient_attention()


def prompt_notes(config: TrainConfig, tokenizer) -> list[str]:
    """Prompts that train but not as meant: longer than the text encoder reads, or no identifier beside the class."""
    notes = []
    limit = config.tokenizer_max_length or tokenizer.model_max_length
    for flag in ("instance_prompt", "class_prompt", "validation_prompt"):
        prompt = getattr(config, flag)
        if prompt and len(tokenizer(prompt).input_ids) > limit:
            kept = tokenizer.decode(tokenizer(prompt, truncation=True, max_length=limit).input_ids, skip_special_tokens=True)
            notes.append(f"--{flag} is {len(tokenizer(prompt).input_ids)} tokens long; the text encoder reads the first "
                         f"{limit}: {kept!r}.")
    words = config.instance_prompt.lower().split()
    if config.class_prompt and set(config.instance_prompt.split()) <= set(config.class_prompt.split()):
        notes.append(f"--instance_prompt={config.instance_prompt!r} adds no word to --class_prompt: without a rare "
                     f"identifier (e.g. 'a photo of sks dog') the model learns your subject as the class itself.")
    elif not config.class_prompt and len(words) >= 2 and words[-2] in ("a", "an", "the", "my", "your", "our"):
        notes.append(f"--instance_prompt={config.instance_prompt!r} has no identifier before the class word "
                     f"{words[-1]!r}: DreamBooth binds the subject to a rare word (e.g. 'a photo of sks {words[-1]}'); "
                     f"without one the model learns your subject as the class itself.")
    return notes


def report_photos(image_sets, resolution: int, world: World) -> None:
    """When any training picture was skipped, converted, upscaled or doubled: the check table, and the command to rerun it."""
    for images in image_sets:
        report = images.report
        if report is not None and any(c.verdict != "ok" for c in report.checks):
            _say(world, f"{report}\ncheck this folder again with: python -m dreambooth_nb.check {report.folder} "
                        f"--resolution {resolution}")


def room_needed(config: TrainConfig, components: Components, trainer: Trainer, steps: int) -> int:
    """Bytes the run will write: the model, and the checkpoints kept at once."""
    from ..models import count_parameters

    trained = sum(count_parameters(net) for net in trainer.nets.values()) * 4
    model = sum(count_parameters(n) for n in (components.unet, components.vae, components.text_encoder) if n is not None) * 4
    return bytes_needed(trained, model, config.checkpoints_total_limit, max(1, steps // config.checkpointing_steps))


def check_resolution(resolution: int, components: Components, headroom: int = 4) -> None:
    """Refuse a resolution far above what the model was built for: its attention layers would need huge buffers."""
    native = model_resolution(components)
    if resolution > headroom * native:
        raise InputError(f"--resolution={resolution} is more than {headroom}x the {native} px this model was built for "
                         f"(memory grows with the square of the image area); use --resolution={native}.")


def set_sample_size(components: Components, resolution: int) -> None:
    """Record the training resolution in the UNet's config (as the reference does), so sampling uses it."""
    components.unet.register_to_config(sample_size=resolution // vae_factor(components))


def resume(config: TrainConfig, trainer: Trainer, world: World) -> TrainResult:
    """A TrainResult starting at step 0, or at the checkpoint --resume_from_checkpoint names (checked, state restored).

    A new run in a folder an earlier run used first moves that run's results to previous-runs/, and says so.
    """
    output_dir = Path(config.output_dir)
    result = TrainResult(output_dir)
    path = ckpt.find_checkpoint(config.resume_from_checkpoint, output_dir)
    if path is None:
        if config.resume_from_checkpoint:
            _say(world, f"no checkpoint in {output_dir} yet: starting from step 0")
        kept = keep_earlier_run(output_dir) if world.main else None
        if kept is not None:
            _say(world, f"{output_dir} held an earlier run: its model, logs and checkpoints are kept in {kept}")
        barrier(world)
        return result
    state = ckpt.load_checkpoint(path, trainer.nets, trainer.optimizer, config)
    result.steps, result.history, result.resumed_from = state["step"], list(state["history"]), path
    _say(world, f"resumed from {path} (step {result.steps})")
    return result


def open_metrics(config: TrainConfig, world: World, step: int):
    """The metrics log of this run (rank 0, report_to != 'none'), cut back to `step` when resuming."""
    from .report import MetricsLog

    enabled = world.main and config.report_to != "none"
    log = MetricsLog(Path(config.output_dir) / config.logging_dir if enabled else None)
    log.truncate(step)
    return log


@dataclass
class Run:
    """Everything one training run works with, from its first step to its saved model."""

    config: TrainConfig
    components: Components
    trainer: Trainer
    make_batch: BatchMaker
    steps: int  # optimizer steps to reach
    result: TrainResult
    world: World
    log: object  # report.MetricsLog
    device: str = "CPU"
    method: TrainingMethod = FULL_FINE_TUNING


def run_loop(run: Run, progress: bool, on_step, stop_requested: Callable[[], bool] = lambda: False) -> None:
    """Optimizer steps from run.result.steps to run.steps, with checkpoints, validation and logging; stops cleanly on interrupt."""
    from ..common.viz import progress_bar

    result = run.result
    bar = progress_bar(total=run.steps, initial=result.steps, desc="training", unit="step",
                       disable=not (progress and run.world.main))
    try:
        for step in range(result.steps, run.steps):
            start = time.perf_counter()
            with first_step_said(run, bar, progress and run.world.main):
                values = run.trainer.run(run.make_batch, step)
            record = {"step": step + 1, **values, "lr": run.trainer.schedule[step]}
            require_finite_loss(run, record)
            result.history.append(record)
            result.steps = step + 1
            result.step_seconds.append(time.perf_counter() - start)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}", refresh=False)
            bar.update(1)
            after_step(run)
            run.log.scalars(record)
            if on_step is not None:
                on_step(result.history)
            if stop_requested():
                raise KeyboardInterrupt("stop asked")
    except KeyboardInterrupt:
        stop_with_checkpoint(run)
    finally:
        bar.close()


def first_step_said(run: Run, bar, show: bool):
    """The first step of a trainer compiles its graph (or loads it from the compile cache, where this run's graph was
    compiled before): said before it starts, its seconds counted on the bar; later steps (and a trainer reused by the
    next run) go through unannounced."""
    if run.trainer.warm:
        return contextlib.nullcontext()
    run.trainer.warm = True
    return first_step_compiled(run, bar, show)


@contextlib.contextmanager
def first_step_compiled(run: Run, bar, show: bool):
    """The first step inside the compile cache's block for this run's graph, said as a compile or as a load."""
    key = (f"train step: {run.components.source} {run.config.resolution} px, batch {run.config.train_batch_size}, "
           f"{'prior' if run.config.with_prior_preservation else 'no prior'}, {run.method.result_kind}")
    parts = training_graph_parts(run.config, run.trainer, run.method, run.device, run.world.size)
    with cached_compile("train step", parts) as cached:
        said = (dict(what="loading the training step compiled before, from the compile cache", key=key + ", cached",
                     first_time="a few seconds") if cached else dict(what="compiling the training step", key=key))
        with said_wait(bar=bar, show=show, **said):
            yield


def training_graph_parts(config: TrainConfig, trainer: Trainer, method: TrainingMethod = FULL_FINE_TUNING,
                         device: str = "CPU", workers: int = 1) -> dict:
    """Everything that shapes a run's step graph (the compile cache's key): its settings (all but the graph-neutral
    ones), its method, every weight the step's cells bind (networks, optimizer state) by name, shape and type, the
    device and the number of workers."""
    neutral = set(names_with(config, "graph_neutral")) | set(names_with(config, "secret"))
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in neutral}
    cells = {"step": trainer.step_cell, **({"apply": trainer.apply_cell} if trainer.apply_cell else {})}
    return {"config": [type(config).__name__, settings], "method": type(method).__name__,
            "result": method.result_kind, "networks": network_signature(cells), "device": device, "workers": workers,
            "accumulation": trainer.accumulation, "sink": trainer.sink is not None}


def validate_before_training(run: Run) -> None:
    """Validation images and loss at step 0 (a fresh run with a validation prompt): the 'before' of samples over steps."""
    if run.config.validation_prompt and run.result.steps == 0 and run.world.main:
        from .report import validation_images

        images, paths = validation_images(run.method.pipeline, run.components, run.config, 0, run.result.output_dir)
        run.result.validation[0] = paths
        run.log.images(0, images)


def save_samples_grid(output_dir: Path) -> Path | None:
    """output_dir/samples.png: the validation images over the steps (before training on top, the end at the bottom)."""
    from ..common.files import save_atomic
    from .report import samples_over_steps, validation_steps_saved

    if len(validation_steps_saved(output_dir)) < 2:
        return None
    import matplotlib.pyplot as plt

    figure = samples_over_steps(output_dir)
    path = save_atomic(figure, output_dir / "samples.png")
    plt.close(figure)
    return path


def after_step(run: Run) -> None:
    """A checkpoint every checkpointing_steps; validation images and the fixed-noise loss every validation_steps."""
    from .report import validation_images

    result, config = run.result, run.config
    if config.validation_prompt and result.steps % config.validation_steps == 0 and run.world.main:
        result.history[-1].update(validation_loss(run))
        images, paths = validation_images(run.method.pipeline, run.components, config, result.steps, result.output_dir)
        result.validation[result.steps] = paths
        run.log.images(result.steps, images)
    if result.steps % config.checkpointing_steps == 0:
        write_checkpoint(run)


def validation_loss(run: Run) -> dict[str, float]:
    """The loss terms on a fixed batch (the first batch's pictures, fixed noise, timesteps spread evenly over
    the schedule): unlike one step's loss, it does not jump with the timesteps a step happened to draw."""
    import mindspore as ms

    loss_net = run.trainer.step_cell.loss_net
    outputs = loss_net(*[ms.Tensor(x) for x in run.make_batch.fixed()])
    scale = getattr(loss_net, "scale", 1.0)
    values = [float(v.asnumpy()) for v in outputs]
    values[0] /= scale
    return {f"val_{term}": value for term, value in zip(run.trainer.terms, values)}


class TrainingDiverged(UserError, RuntimeError):
    """The loss or the weights stopped being finite numbers; the message names the step and what to change."""


def require_finite_loss(run: Run, record: dict) -> None:
    """Stop the run when a step's loss is nan or inf: nothing of it is saved, the last good checkpoint stays."""
    bad = {k: v for k, v in record.items() if k.endswith("loss") and v is not None and not math.isfinite(v)}
    if bad:
        raise TrainingDiverged(diverged_message(run, record["step"], f"the loss became {bad}"))


def require_finite_weights(run: Run, what: str) -> None:
    """Refuse to save `what` when a trained weight is nan or inf."""
    for name, net in run.trainer.nets.items():
        for key, p in net.parameters_and_names():
            if p.requires_grad and not np.isfinite(p.asnumpy()).all():
                raise TrainingDiverged(diverged_message(run, run.result.steps, f"{name}/{key} holds nan or inf; {what} was not saved"))


def diverged_message(run: Run, step: int, what: str) -> str:
    """One line: the step, what went wrong, the last good checkpoint, what to lower."""
    latest = ckpt.list_checkpoints(run.config.output_dir)
    keep = f"the last good checkpoint is {latest[-1].name}" if latest else "no checkpoint was written"
    return (f"training stopped at step {step}: {what}; nothing of that step was saved and {keep}. Lower "
            f"--learning_rate (now {run.config.learning_rate:g}) or --max_grad_norm, then train again.")


def write_checkpoint(run: Run) -> None:
    """checkpoint-<steps done> (rank 0 only), then drop the oldest beyond checkpoints_total_limit."""
    if not run.world.main:
        return
    require_finite_weights(run, f"checkpoint-{run.result.steps}")
    config, trainer, result = run.config, run.trainer, run.result
    step = result.steps
    state = {"learning_rate": trainer.schedule[min(step, len(trainer.schedule) - 1)], "seed": config.seed,
             "history": result.history[:step], "config": shareable_settings(config)}
    saved = ckpt.save_checkpoint(config.output_dir, step, trainer.nets, trainer.optimizer, state, trainer.whole_networks)
    result.checkpoints.append(saved)
    write_run_card(saved, config, result.history[:step], steps_done=step, device=run.device, seed=config.seed)
    for removed in ckpt.prune_checkpoints(config.output_dir, config.checkpoints_total_limit):
        if removed in result.checkpoints:
            result.checkpoints.remove(removed)


def stop_with_checkpoint(run: Run) -> None:
    """After an interrupt: trust the optimizer's own step counter, and checkpoint that step unless it already is."""
    result = run.result
    result.interrupted = True
    done = run.trainer.optimizer_steps()
    # a second Ctrl-C can cut a step after its update: that step's loss was never read
    result.history = (result.history + [{"step": s + 1} for s in range(len(result.history), done)])[:done]
    result.steps = done
    latest = ckpt.find_checkpoint("latest", run.config.output_dir)
    if done > 0 and (latest is None or ckpt.checkpoint_step(latest) != done):
        write_checkpoint(run)
    where = result.checkpoints[-1] if result.checkpoints else latest
    if where is None:
        _say(run.world, f"interrupted after step {done}, before any checkpoint: run the same command again to start over")
    else:
        _say(run.world, f"interrupted after step {done}; resume with resume_from_checkpoint='latest' ({where})")


def stop_after(steps: int, on_step: Callable[[list], None] | None = None) -> Callable[[list], None]:
    """An on_step callback that interrupts training after `steps` steps, as Ctrl-C or a Stop button would.

    on_step, when given, still runs first at every step (a LivePlot, for example).
    """
    def stop(history: list) -> None:
        if on_step is not None:
            on_step(history)
        if len(history) >= steps:
            raise KeyboardInterrupt(f"stop_after({steps})")

    return stop


def warn(message: str) -> None:
    """One line on stderr (a notebook shows it in red), not a Python warning with its source line."""
    print(f"warning: {message}", file=sys.stderr)


def _say(world: World, message: str) -> None:
    if world.main:
        print(message)


# --------------------------------------------------------------------------------- results
def write_digest(output_dir: Path, world: World, nets: dict) -> Path:
    """output_dir/rank-digests/rank-<R>.json: this rank's weight digest (equal on every rank after data-parallel training)."""
    path = output_dir / DIGEST_DIR / f"rank-{world.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": world.rank, "world": world.size, "networks": sorted(nets),
                                **ckpt.weight_digest(nets)}), encoding="utf-8")
    return path

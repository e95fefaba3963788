"""The training-method interface: the hooks full fine-tuning, LoRA and SDXL LoRA each give the one engine.

The engine (train.engine) does what every method shares, once: freezing what is not trained, train mode, gradient
checkpointing, adding adapters, --validation_epochs in steps, checkpoints, the run card. A method says only what
depends on the model or on what is trained. The three methods are siblings: engine.FULL_FINE_TUNING (chapter 04) and
lora.LORA (chapter 08), two StableDiffusionMethods that differ in settings, trained layers and what they save, and
sdxl.training.SDXL_LORA (chapter 09); `train.cli.main(argv, method)` is the command line of each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TrainingMethod(Protocol):
    """What a training method provides (every attribute and hook below; `missing_hooks` lists what one lacks)."""

    config_class: type  # its settings: TrainConfig or a subclass, named as its reference script's flags
    command: str  # the module of its command line, e.g. "dreambooth_nb.train_lora" (its config_class.COMMAND)
    description: str  # that command line's one-line description
    result_kind: str  # what output_dir holds when a run is done: "pipeline" (a whole model) or "adapters" (LoRA file)

    def load(self, config) -> Any:
        """The model's pieces (Components, or SDXLComponents) from the config's model name or folder."""

    def trained_networks(self, config, components) -> dict[str, Any]:
        """{folder name: network} of what this run changes; the engine freezes every other network."""

    def adapter_targets(self, config, name: str) -> tuple[str, ...] | None:
        """The layer names that get LoRA adapters in the network `name` (the UNet's as --lora_layers says), or None:
        all its weights train."""

    def parameters(self, config, nets: dict, schedule: list) -> list:
        """What AdamW updates: the trainable weights, or parameter groups with learning rates of their own."""

    def loss(self, config, components, precomputed: bool) -> Any:
        """The compiled forward pass and loss Cell."""

    def embeddings(self, config, components, image_sets) -> tuple | None:
        """Text embeddings computed once before training (frozen encoders), else None."""

    def batches(self, config, components, instance, classes, seed: int, world, embeddings) -> Any:
        """Every step's inputs (a BatchMaker), made on the host from (seed, step)."""

    def pipeline(self, components, scheduler: str | None = None) -> Any:
        """A sampling pipeline sharing the networks being trained (validation and class images)."""

    def save_result(self, components, output_dir: Path, config) -> Path:
        """Write what the run keeps into output_dir; returns the main file or folder written."""


# the interface's names, read from the Protocol itself: its attributes, then its hooks
HOOKS = (*TrainingMethod.__annotations__,
         *(name for name, value in vars(TrainingMethod).items() if callable(value) and not name.startswith("_")))


def missing_hooks(method) -> list[str]:
    """The attributes and hooks of TrainingMethod that `method` lacks (empty when it is a complete method)."""
    return [name for name in HOOKS if not hasattr(method, name)]

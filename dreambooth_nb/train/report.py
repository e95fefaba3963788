"""What training reports as it goes: scalars per step and validation images every validation_steps."""

from __future__ import annotations

import json
import os
from pathlib import Path

METRICS_FILE = "metrics.jsonl"


def tensorboard_writer(folder: Path):
    """A TensorBoard SummaryWriter (tensorboardX, or PyTorch's) when one is installed; None otherwise."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            import importlib

            return importlib.import_module(module).SummaryWriter(str(folder))
        except ImportError:
            continue
    return None


class MetricsLog:
    """Loss and learning rate per step in logging_dir/metrics.jsonl, and in TensorBoard when a writer is installed.

    MindSpore has no TensorBoard writer of its own (its SummaryRecord writes MindInsight files), so the
    pinned tensorboardX writes the event files; the JSON lines file is always written too.
    """

    def __init__(self, folder: str | os.PathLike | None):
        self.folder = Path(folder) if folder is not None else None
        self.writer = None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.writer = tensorboard_writer(self.folder)

    @property
    def path(self) -> Path | None:
        return self.folder / METRICS_FILE if self.folder is not None else None

    def truncate(self, step: int) -> None:
        """Forget lines after `step` (a run resumed from checkpoint-<step> writes them again)."""
        if self.path is None or not self.path.is_file():
            return
        lines = self.path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def scalars(self, step: int, **values: float) -> None:
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for name, value in values.items():
            if self.writer is not None:
                self.writer.add_scalar(f"train/{name}", value, step)

    def images(self, step: int, images: list) -> None:
        if self.writer is not None and images:
            import numpy as np

            self.writer.add_images("validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The lines of a metrics.jsonl file as dicts."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def validation_images(components, config, step: int, output_dir: Path) -> tuple[list, list[Path]]:
    """num_validation_images images of validation_prompt (seeds seed, seed+1, ...; 25 denoising steps as the
    reference, 10 under DREAMBOOTH_NB_FAST=1) saved under validation/step-N/."""
    from ..common import defaults
    from ..sampling import generate, pipeline_from_components, save_images

    pipe = pipeline_from_components(components, config.validation_scheduler)
    seed = defaults.SEED if config.seed is None else config.seed
    n = config.num_validation_images
    images = generate(pipe, [config.validation_prompt] * n, list(range(seed, seed + n)), size=config.resolution,
                      batch_size=n)
    return images, save_images(images, output_dir / "validation" / f"step-{step}")


def plot_lr_schedule(config, steps: int | None = None, ax=None):
    """Learning rate per optimizer step for every lr_scheduler choice, config's own drawn bold; returns the figure."""
    import matplotlib.pyplot as plt

    from ..common.config import LR_SCHEDULERS
    from .step import lr_schedule

    steps = steps or config.max_train_steps or 100
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    for name in LR_SCHEDULERS:
        values = lr_schedule(config.replace(lr_scheduler=name), steps)[:steps]
        mine = name == config.lr_scheduler
        ax.plot(range(1, steps + 1), values, lw=2.5 if mine else 1, alpha=1 if mine else 0.45,
                label=f"{name} (this run)" if mine else name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    ax.set_title(f"lr schedules, warmup {config.lr_warmup_steps} steps")
    ax.legend(fontsize=7)
    ax.figure.tight_layout()
    return ax.figure

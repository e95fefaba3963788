"""What training reports as it goes: the loss terms of every step, and every validation_steps the fixed-noise
validation loss and sample images (of the validation prompt and, when there is one, the class prompt)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from ..common.errors import MissingFileError

METRICS_FILE = "metrics.jsonl"
VALIDATION_DIR = "validation"
PROMPTS_FILE = "prompts.json"


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
        """Forget lines after `step` (a run resumed from checkpoint-<step> writes them again) and any torn line."""
        if self.path is None or not self.path.is_file():
            return
        kept = [json.dumps(r) for r in read_metrics(self.path) if r.get("step", step + 1) <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")

    def scalars(self, record: dict) -> None:
        """Append one step's record (its "step" and every term) to metrics.jsonl and TensorBoard."""
        if self.path is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in record.items():
                if name != "step" and value is not None:
                    group = "validation" if name.startswith("val_") else "train"
                    self.writer.add_scalar(f"{group}/{name.removeprefix('val_')}", value, record["step"])

    def images(self, step: int, images: list) -> None:
        if self.writer is not None and images:
            import numpy as np

            self.writer.add_images("validation", np.stack([np.asarray(im) for im in images]), step, dataformats="NHWC")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The lines of a metrics.jsonl file as dicts (a torn last line, left by a killed process, is skipped)."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return [r for r in records if isinstance(r, dict)]


def validation_prompts(config) -> list[str]:
    """The validation prompt, and the class prompt when one is set: what the subject became, and what the class became."""
    prompts = [config.validation_prompt]
    if config.class_prompt and config.class_prompt != config.validation_prompt:
        prompts.append(config.class_prompt)
    return prompts


def validation_images(make_pipeline, components, config, step: int, output_dir: Path) -> tuple[list, list[Path]]:
    """num_validation_images images of each validation prompt (seeds seed, seed+1, ...; 25 denoising steps as the
    reference, 10 under DREAMBOOTH_NB_FAST=1) saved under validation/step-N/ as p<prompt>-<image>.png."""
    from ..common import defaults
    from ..common.files import write_json_atomic
    from ..sampling import generate, save_images

    pipe = make_pipeline(components, config.validation_scheduler)
    seed = config.seed_used
    n = config.num_validation_images
    folder = output_dir / VALIDATION_DIR / f"step-{step}"
    images, paths = [], []
    for k, prompt in enumerate(validation_prompts(config)):
        drawn = generate(pipe, [prompt] * n, list(range(seed, seed + n)), size=config.resolution, batch_size=n)
        images += drawn
        paths += save_images(drawn, folder, prefix=f"p{k}")
    write_json_atomic(folder / PROMPTS_FILE, {"prompts": validation_prompts(config), "seeds": list(range(seed, seed + n))})
    return images, paths


def validation_steps_saved(output_dir: str | os.PathLike) -> list[int]:
    """The steps at which a run saved validation images, in order."""
    folder = Path(output_dir) / VALIDATION_DIR
    steps = [int(m.group(1)) for p in folder.glob("step-*") if (m := re.match(r"step-(\d+)$", p.name))]
    return sorted(steps)


def validation_files(output_dir: str | os.PathLike) -> dict[int, list[list[Path]]]:
    """A run's saved validation images: {step: [the files of each prompt, in seed order]}, steps in order."""
    folder = Path(output_dir) / VALIDATION_DIR
    files = {}
    for step in validation_steps_saved(output_dir):
        prompts = json.loads((folder / f"step-{step}" / PROMPTS_FILE).read_text(encoding="utf-8"))["prompts"]
        files[step] = [sorted((folder / f"step-{step}").glob(f"p{k}-*.png")) for k in range(len(prompts))]
    return files


def samples_over_steps(output_dir: str | os.PathLike, prompt_index: int | None = None):
    """One figure of a run's validation images: a row per validation step, the same seeds in the same columns.

    prompt_index: 0 for the validation prompt, 1 for the class prompt, None for both side by side.
    """
    from ..common.viz import show_images
    from ..data import load_rgb

    folder = Path(output_dir) / VALIDATION_DIR
    files = validation_files(output_dir)
    if not files:
        raise MissingFileError(f"{folder} holds no step-N folders: train with validation_prompt set "
                                f"(and validation_steps below max_train_steps) to save samples as training goes.")
    info = json.loads((folder / f"step-{max(files)}" / PROMPTS_FILE).read_text(encoding="utf-8"))
    prompts = list(range(len(info["prompts"]))) if prompt_index is None else [prompt_index]
    images, titles = [], []
    for step, per_prompt in files.items():
        for k in prompts:
            images += [load_rgb(p) for p in per_prompt[k]]
            titles += [f"step {step}" if i == 0 else "" for i in range(len(per_prompt[k]))]
    ncols = len(images) // len(files)
    header = "   |   ".join(f"{info['prompts'][k]!r}, seeds {info['seeds'][0]}-{info['seeds'][-1]}" for k in prompts)
    return show_images(images, titles=titles, ncols=ncols, scale=1.3, suptitle=header)


def validation_readings(output_dir: str | os.PathLike) -> dict[int, list[list]]:
    """The toy world's judge on a run's validation images: {step: [one verdict per seed, for each prompt]} (the prompts
    in samples_over_steps' order: the validation prompt, then the class prompt)."""
    from ..common.judge import load_judge
    from ..data import load_rgb

    judge = load_judge()
    return {step: [judge.read([load_rgb(p) for p in paths]) for paths in per_prompt]
            for step, per_prompt in validation_files(output_dir).items()}


def plot_lr_schedule(config, steps: int | None = None):
    """Learning rate per optimizer step for every lr_scheduler choice, one small panel each (several coincide for
    some settings, e.g. linear and polynomial with lr_power 1); the config's own is drawn in colour. The figure."""
    import matplotlib.pyplot as plt

    from ..common.config import LR_SCHEDULERS
    from .step import lr_schedule

    steps = steps or config.max_train_steps or 100
    fig, axes = plt.subplots(2, 3, figsize=(8, 4), sharex=True, sharey=True)
    for ax, name in zip(axes.flat, LR_SCHEDULERS):
        values = lr_schedule(config.replace(lr_scheduler=name), steps)[:steps]
        mine = name == config.lr_scheduler
        ax.plot(range(1, steps + 1), values, lw=2.5 if mine else 1.5, color="#1f77b4" if mine else "#777777")
        ax.set_title(f"{name}{' (this run)' if mine else ''}", fontsize=9, fontweight="bold" if mine else "normal")
    for ax in axes[-1]:
        ax.set_xlabel("optimizer step")
    for ax in axes[:, 0]:
        ax.set_ylabel("learning rate")
    fig.suptitle(f"lr_scheduler choices: peak {config.learning_rate:g}, warmup {config.lr_warmup_steps} steps, "
                 f"{config.lr_num_cycles} cycle(s), power {config.lr_power:g}", fontsize=10)
    fig.tight_layout()
    return fig
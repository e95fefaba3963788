"""Chapter 03 (the guide's data classes): the reference script's `DreamBoothDataset`, `PromptDataset` and
`collate_fn`, written short for the course and run on MindSpore's `GeneratorDataset` as the script runs them, beside
what the trainer's `BatchMaker` makes of the same photos.

The reference (mindone's `examples/diffusers/dreambooth/train_dreambooth.py`) reads the images with MindSpore's
vision transforms and lets `GeneratorDataset(shuffle=True)` pick the order; the trainer here picks each step's rows
from (seed, step) alone (`batches.batch_indices`), so a resumed run continues with the very batch it stopped at.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batches import Batch
from .common.tables import Table
from .data import list_images, load_rgb
from .models import tokenize_with_mask


def image_transforms(size: int, center_crop: bool):
    """The reference's preprocessing: shorter side to `size` (bilinear), a centre or random crop, CHW in [-1, 1]."""
    from mindspore.dataset import transforms, vision

    return transforms.Compose([
        vision.Resize(size, interpolation=vision.Inter.BILINEAR),
        vision.CenterCrop(size) if center_crop else vision.RandomCrop(size),
        vision.ToTensor(),
        vision.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5], is_hwc=False),
    ])


class DreamBoothDataset:
    """Example i: instance photo i (mod their number) with the instance prompt's tokens and, with a class folder,
    class image i (mod their number) with the class prompt's tokens. Its length is the larger of the two counts."""

    def __init__(self, instance_data_root, instance_prompt: str, tokenizer, class_data_root=None,
                 class_prompt: str | None = None, class_num: int | None = None, size: int = 512,
                 center_crop: bool = False):
        self.instance_paths = list_images(instance_data_root)  # sorted (the script lists the folder unsorted)
        self.class_paths = list_images(class_data_root)[:class_num] if class_data_root else []
        self.prompts = {"instance": tokenize_with_mask(tokenizer, instance_prompt)}
        if self.class_paths:
            self.prompts["class"] = tokenize_with_mask(tokenizer, class_prompt)
        self.transform = image_transforms(size, center_crop)

    def __len__(self) -> int:
        return max(len(self.instance_paths), len(self.class_paths))

    def __getitem__(self, index: int) -> dict:
        example = {}
        for half, paths in (("instance", self.instance_paths), ("class", self.class_paths)):
            if paths:
                ids, mask = self.prompts[half]
                example[f"{half}_images"] = self.transform(load_rgb(paths[index % len(paths)]))[0]  # a 1-tuple
                example[f"{half}_prompt_ids"], example[f"{half}_attention_mask"] = ids, mask
        return example


class PromptDataset:
    """The class prompt `num_samples` times, each with its index: what the script batches to draw class images."""

    def __init__(self, prompt: str, num_samples: int):
        self.prompt, self.num_samples = prompt, num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        return {"prompt": self.prompt, "index": index}


def collate_fn(examples: list[dict], with_prior_preservation: bool = False) -> tuple[np.ndarray, ...]:
    """One batch from a list of examples: every instance row first, then (with the prior) every class row, so one
    UNet call sees both halves and the loss splits them again (chapter 03's dreambooth_loss)."""
    halves = ("instance", "class") if with_prior_preservation else ("instance",)
    pixels = np.stack([e[f"{h}_images"] for h in halves for e in examples]).astype(np.float32)
    ids = np.concatenate([e[f"{h}_prompt_ids"] for h in halves for e in examples])
    mask = np.concatenate([e[f"{h}_attention_mask"] for h in halves for e in examples])
    return pixels, ids, mask


def guide_loader(dataset: DreamBoothDataset, batch_size: int, with_prior: bool, shuffle: bool = False):
    """The script's train_dataloader: GeneratorDataset(...).batch(per_batch_map=collate_fn)."""
    from mindspore.dataset import GeneratorDataset

    return GeneratorDataset(dataset, column_names=["example"], shuffle=shuffle).batch(
        batch_size=batch_size, per_batch_map=lambda examples, info: collate_fn(examples, with_prior),
        input_columns=["example"], output_columns=["c1", "c2", "c3"])


def guide_dataset(config, tokenizer) -> DreamBoothDataset:
    """The reference's dataset for a training config (its class folder only with prior preservation)."""
    return DreamBoothDataset(config.instance_data_dir, config.instance_prompt, tokenizer,
                             config.class_data_dir if config.with_prior_preservation else None, config.class_prompt,
                             config.num_class_images, config.resolution, config.center_crop)


@dataclass(repr=False)
class GuideMatch(Table):
    """Each row of a trainer batch beside the guide's example holding the same picture."""

    rows_found: list  # (row, half, file name, largest pixel difference, prompt ids equal)
    caption = "The trainer's batch, row by row, against the reference's dataset"
    header = ("row", "half", "the guide's file", "largest pixel difference", "same token ids")

    def rows(self) -> list[tuple]:
        return [(r, h, f, f"{d:.1e}", same) for r, h, f, d, same in self.rows_found]

    @property
    def largest_difference(self) -> float:
        return max(d for _, _, _, d, _ in self.rows_found)


def match_batch(dataset: DreamBoothDataset, batch: Batch) -> GuideMatch:
    """For each row of the trainer's batch: the guide's picture nearest to it (same half), how far apart, and
    whether the prompt's token ids are the same."""
    found, examples = [], [dataset[i] for i in range(len(dataset))]  # each picture transformed once
    for row, half in enumerate(batch.halves):
        paths = dataset.instance_paths if half == "instance" else dataset.class_paths
        pictures = [examples[i][f"{half}_images"] for i in range(len(paths))]
        gaps = [float(np.abs(p - batch.pixels[row]).max()) for p in pictures]
        best = int(np.argmin(gaps))
        same = bool(np.array_equal(dataset.prompts[half][0][0], batch.input_ids[row]))
        found.append((row, half, Path(paths[best]).name, gaps[best], same))
    return GuideMatch(found)

"""DreamBooth in the toy world, measured: the base model, DreamBooth without and with prior preservation, over seeds.

    python -m dreambooth_nb.toyworld.experiments [--seeds 0 1 2]   # trains both runs per seed, prints the table
    python -m dreambooth_nb.toyworld.experiments --sweep           # the recipe sweep: each recipe x steps x seeds
    python -m dreambooth_nb.toyworld.experiments --recipe "judged class images + text encoder trained" --steps 600
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..common import scenes
from ..common.assets import results_dir
from ..common.tables import Table
from ..common.config import TOY_RUNS_DIR, toy_dreambooth_config
from ..common.defaults import TOY_FOLLOWING, TOY_JUDGED, TOY_STEPS, by_profile
from . import evaluate
from .evaluate import NEW_CONTEXTS, Scores, Spread, over_seeds

MODELS = {"base model": None, "no prior": False, "with prior": True}  # name: with_prior_preservation (None: not trained)
MAIN_SCORES = ("subject fidelity", "recontext", "new contexts: subject kept", "new contexts: context right",
               "class kept", "class drift", "class colours (bits)", "identifier distance")
# the targets for DreamBooth with prior preservation: score -> lowest mean
TARGETS = {"subject fidelity": 0.80, "new contexts: subject kept": 0.70, "new contexts: context right": 0.70,
           "class kept": 0.80}
SWEEP_EVERY = 200  # checkpoints scored along each sweep run (constant learning rate, no warm-up)
SWEEP_STEPS = 600
SWEEP_DIR = TOY_RUNS_DIR / "sweep"
CHAPTER_RECIPE = "chapter 06's recipe"


def toy_samples(n: int = 8, seed: int = 0) -> tuple[list, list[str]]:
    """n pictures of the pretraining data (PIL) and their captions."""
    from PIL import Image

    images, captions, _ = scenes.dataset(n, seed)
    return [Image.fromarray(im) for im in images], captions


def toy_subject_images(n: int = 5):
    """The subject's instance photos: a purple star with yellow stripes (never seen in pretraining)."""
    return scenes.subject_images(n)


def sample_counts() -> dict:
    """Pictures judged per seed and model: fewer under the test profile (DREAMBOOTH_NB_FAST=1)."""
    return dict(by_profile(TOY_JUDGED))


def toy_prompt_following(pipe, seed: int = 0) -> dict:
    """How often the toy model draws what a fresh caption names (shape, colour, background, size, place)."""
    return evaluate.prompt_following(pipe, seed, **by_profile(TOY_FOLLOWING))


def toy_dreambooth_scores(pipe, seed: int = 0) -> dict:
    """Subject fidelity, recontextualisation and class preservation of a (fine-tuned) toy-world pipeline."""
    return evaluate.dreambooth_scores(pipe, seed, **sample_counts())


def slug(name: str) -> str:
    """A folder name for a model or recipe name: `with prior` -> `with-prior`."""
    return name.replace(" ", "-").replace("'", "").replace("+", "and")


def run_dir(model: str, seed: int, recipe: str = CHAPTER_RECIPE) -> Path:
    """Where the DreamBooth run of `model` ('no prior' or 'with prior') with this recipe and seed writes."""
    folder = TOY_RUNS_DIR if recipe == CHAPTER_RECIPE else TOY_RUNS_DIR / slug(recipe)
    return folder / f"{slug(model)}-seed{seed}"


def train_toy(prior: bool, seed: int = 0, progress: bool = True, recipe: str = CHAPTER_RECIPE, **changes) -> Path:
    """One DreamBooth run on the toy subject (chapter 06's recipe, or one of RECIPES) with this seed; its output_dir."""
    from ..train import train_dreambooth

    name = "with prior" if prior else "no prior"
    config = toy_dreambooth_config(prior, output_dir=str(run_dir(name, seed, recipe)), seed=seed)
    train_dreambooth(with_recipe(config, recipe, progress, **changes), progress=progress)
    return Path(config.output_dir)


@dataclass
class Experiments:
    """Scores per model and seed (each a dict from evaluate.dreambooth_scores) and the table over seeds."""

    runs: dict[str, list[dict]] = field(default_factory=dict)
    recipe: str = CHAPTER_RECIPE

    def spreads(self) -> dict[str, dict[str, Spread]]:
        return {name: over_seeds(runs) for name, runs in self.runs.items()}

    def table(self, detail: bool = False) -> Scores:
        """The main scores (detail=True: each new context's 'kept' and 'context right' too), mean ± sd over seeds."""
        seeds = len(next(iter(self.runs.values())))
        spreads = {name: {k: v for k, v in s.items() if detail or k in MAIN_SCORES} for name, s in self.spreads().items()}
        return Scores(spreads, caption=f"DreamBooth on the toy world ({self.recipe}), mean ± sd over {seeds} seed(s)",
                      targets=target_verdicts(self.spreads()))

    def figure(self, seed_index: int = 0):
        return payoff_figure({name: runs[seed_index] for name, runs in self.runs.items()})

    def to_json(self) -> dict:
        return {name: [{k: v for k, v in r.items() if isinstance(v, float)} for r in runs] for name, runs in self.runs.items()}


def target_verdicts(spreads: dict[str, dict[str, Spread]]) -> dict[str, str]:
    """Each target of the with-prior run, said as met or not met: the lowest means, colour diversity no lower than
    the base model's, and drift without the prior larger than with it beyond both spreads."""
    prior, base, free = spreads.get("with prior", {}), spreads.get("base model", {}), spreads.get("no prior", {})
    out = {}
    for key, lowest in TARGETS.items():
        if key in prior:
            out[key] = f"with prior >= {lowest * 100:.0f} %: {'met' if prior[key].mean >= lowest else 'not met'}"
    key = "class colours (bits)"
    if key in prior and key in base:
        out[key] = f"with prior >= base: {'met' if prior[key].mean >= base[key].mean else 'not met'}"
    key = "class drift"
    if key in prior and key in free:
        apart = free[key].mean - free[key].sd > prior[key].mean + prior[key].sd
        out[key] = f"no prior > with prior, beyond the spread: {'met' if apart else 'not met'}"
    return out


def run_experiments(seeds=evaluate.SEEDS, progress: bool = True, recipe: str = CHAPTER_RECIPE,
                    **changes) -> Experiments:
    """Score the base model and DreamBooth without and with prior preservation (one of RECIPES), one run per seed."""
    from ..common.assets import resolve_model
    from ..infer import load_pipeline, swap_weights

    pipe = load_pipeline(evaluate.MODEL)  # one pipeline: each run's weights are swapped in (one compiled sampler)
    base = resolve_model(evaluate.MODEL)
    result = Experiments({name: [] for name in MODELS}, recipe)
    for seed in seeds:
        for name, prior in MODELS.items():
            swap_weights(pipe, base if prior is None else train_toy(prior, seed, progress, recipe, **changes))
            result.runs[name].append(toy_dreambooth_scores(pipe, seed))
    swap_weights(pipe, base)
    return result


# ------------------------------------------------------------------ one figure for the payoff
def judged_ok(scores: dict) -> dict[str, list[bool]]:
    """Per picture of a dreambooth_scores result: did the judge find what was asked?"""
    from ..common.judge import load_judge

    judge = load_judge()
    out = {"subject": [v.is_subject for v in judge.read(scores["images"]["subject"])]}
    for label, context in NEW_CONTEXTS.items():
        asked = evaluate.subject_scene(**context)
        out[label] = [all(v.agrees(asked).values()) for v in judge.read(scores["images"][label])]
    out["class"] = [v.shape == "star" and not evaluate.striped(v) for v in judge.read(scores["images"]["class"])]
    return out


def payoff_figure(models: dict[str, dict], per_block: int = 4):
    """One row per model: `a photo of sks star` | the subject in each new context | `a photo of a star`.

    A green frame: the judge found what the prompt asked (the subject; the subject in that context; a plain
    star); a red frame: it did not. Each row is labelled with that model's three scores.
    """
    import matplotlib.pyplot as plt

    from ..common.viz import to_pil

    blocks = [("subject", per_block), *((label, 1) for label in NEW_CONTEXTS), ("class", per_block)]
    ncols = sum(k for _, k in blocks)
    fig, axes = plt.subplots(len(models), ncols, figsize=(0.95 * ncols + 1.6, 1.25 * len(models) + 0.9), squeeze=False)
    for row, (name, scores) in enumerate(models.items()):
        oks, col = judged_ok(scores), 0
        for label, k in blocks:
            for i in range(k):
                ax = axes[row, col]
                ax.imshow(to_pil(scores["images"][label][i]))
                ax.set_xticks([]), ax.set_yticks([])
                for side in ax.spines.values():
                    side.set_edgecolor("#2ca02c" if oks[label][i] else "#d62728")
                    side.set_linewidth(2.5)
                if row == 0 and i == 0:
                    short = label.replace("on an ", "").replace("on a ", "").replace(" background", " bg")
                    title = {"subject": "a photo of sks star", "class": "a photo of a star"}.get(label, f"sks star,\n{short}")
                    ax.set_title(title, fontsize=7, loc="left")
                col += 1
        axes[row, 0].set_ylabel(f"{name}\nsubject {scores['subject fidelity']:.0%}\nnew contexts {scores['recontext']:.0%}"
                                f"\nclass kept {scores['class kept']:.0%}", fontsize=7, rotation=0, ha="right", va="center")
    fig.suptitle("Green frame: the judge finds what the prompt asks; red: it does not", fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ the recipe sweep
# each recipe: what it changes in chapter 06's with-prior run (the JUDGED ones: class images the judge reads as plain stars)
FILTERED = "class images judged plain stars"
BOTH = "judged class images + text encoder trained"
QUARTER = "prior weight 0.25"
JUDGED_QUARTER = "judged class images + prior weight 0.25"
RECIPES = {
    CHAPTER_RECIPE: {},
    "text encoder trained": {"train_text_encoder": True},
    "lr 3e-4": {"learning_rate": 3e-4},
    "prior weight 0.5": {"prior_loss_weight": 0.5},
    "16 class images": {"num_class_images": 16},
    FILTERED: {},
    BOTH: {"train_text_encoder": True},
    QUARTER: {"prior_loss_weight": 0.25},
    JUDGED_QUARTER: {"prior_loss_weight": 0.25},
}
JUDGED = (FILTERED, BOTH, JUDGED_QUARTER)  # the recipes whose class images are the judged plain stars
# measured on their own, after the sweep: BOTH combines its two best; QUARTER follows its best (half the prior's
# weight); JUDGED_QUARTER gives QUARTER the judged class images (pilots: pretraining/toyworld-v6/README.md)
AFTER_SWEEP = (BOTH, QUARTER, JUDGED_QUARTER)
SWEEP_RECIPES = tuple(r for r in RECIPES if r not in AFTER_SWEEP)


def with_recipe(config, recipe: str, progress: bool = True, **changes):
    """`config` changed as `recipe` says, then by `changes` (the caller's values win); a with-prior run of a JUDGED
    recipe learns from judged class images."""
    if recipe not in RECIPES:
        raise KeyError(f"unknown recipe {recipe!r}: choose one of {', '.join(map(repr, RECIPES))}")
    config = dataclasses.replace(config, **{**RECIPES[recipe], **changes})
    if recipe in JUDGED and config.with_prior_preservation:
        folder, count = judged_class_images(config, config.num_class_images, progress)
        config = dataclasses.replace(config, class_data_dir=str(folder), num_class_images=count)
    return config


def judged_class_images(config, wanted: int, progress: bool = True) -> tuple[Path, int]:
    """A folder of `wanted` class images the judge reads as plain stars, picked in order from the unfiltered set
    (which grows, up to 4 x wanted, until enough are found). Returns (folder, how many it holds)."""
    import shutil

    from ..data import load_rgb
    from ..prior import ensure_class_images, usable_class_images
    from ..train.engine import load_sd
    from ..common.judge import load_judge

    folder = Path(f"{config.class_data_dir}-judged-plain")
    kept = usable_class_images(folder)
    judge, pool = load_judge(), wanted
    while len(kept) < wanted and pool <= 4 * wanted:
        source = ensure_class_images(dataclasses.replace(config, num_class_images=pool), load_sd(config), progress)
        for path in usable_class_images(source)[:pool]:
            target = folder / path.name
            if len(kept) < wanted and target not in kept:
                verdict = judge.read([np.asarray(load_rgb(path))])[0]
                if verdict.shape == "star" and not evaluate.striped(verdict):
                    folder.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, target)
                    kept.append(target)
        pool *= 2
    return folder, len(kept)


def recipe_config(recipe: str, seed: int, max_steps: int, every: int, progress: bool = True):
    """Chapter 06's with-prior run changed as `recipe` says, keeping a checkpoint every `every` steps."""
    config = toy_dreambooth_config(True, output_dir=str(SWEEP_DIR / f"{slug(recipe)}-seed{seed}"), seed=seed,
                                   max_train_steps=max_steps, checkpointing_steps=every, checkpoints_total_limit=None,
                                   resume_from_checkpoint="latest")
    return with_recipe(config, recipe, progress)


@dataclass
class Sweep:
    """Scores along each recipe's runs: cells[recipe][steps] is one dreambooth_scores result per seed."""

    cells: dict[str, dict[int, list[dict]]]
    class_images: dict[str, int] = field(default_factory=dict)  # recipe -> class images it trained with

    def table(self, detail: bool = False) -> "SweepTable":
        """One row per (recipe, steps): the main scores, mean ± sd over seeds."""
        return SweepTable(self.cells)

    def contact_sheet(self, per_prompt: int = 2, seed_index: int = 0):
        """Rows: recipes; columns: steps. Each cell: `a photo of sks star` on top, `a photo of a star` below (one seed)."""
        import matplotlib.pyplot as plt

        from ..common.viz import image_grid

        recipes, steps = list(self.cells), sorted(next(iter(self.cells.values())))
        fig, axes = plt.subplots(len(recipes), len(steps), figsize=(1.5 * len(steps) + 1.6, 1.7 * len(recipes) + 0.6),
                                 squeeze=False)
        for r, recipe in enumerate(recipes):
            for c, step in enumerate(steps):
                s, ax = self.cells[recipe][step][seed_index], axes[r, c]
                pictures = s["images"]["subject"][:per_prompt] + s["images"]["class"][:per_prompt]
                ax.imshow(image_grid(pictures, ncols=per_prompt, pad=1))
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"subj {s['subject fidelity']:.0%} · ctx {s['recontext']:.0%}\nclass {s['class kept']:.0%}",
                             fontsize=7)
                if c == 0:
                    ax.set_ylabel(recipe.replace(" class images", "\nclass images").replace(" trained", "\ntrained"),
                                  fontsize=7)
                if r == len(recipes) - 1:
                    ax.set_xlabel(f"{step} steps", fontsize=8)
        fig.suptitle("Each cell: `a photo of sks star` (top), `a photo of a star` (bottom);\none seed, the same "
                     "sampling seeds everywhere", fontsize=9)
        fig.tight_layout()
        return fig

    def to_json(self) -> dict:
        return {"class images": self.class_images,
                "cells": {recipe: {str(st): [{k: v for k, v in s.items() if isinstance(v, float)} for s in runs]
                                   for st, runs in row.items()} for recipe, row in self.cells.items()}}


@dataclass(repr=False)
class SweepTable(Table):
    """The sweep's scores: one row per (recipe, steps), mean ± sd over the seeds measured so far."""

    cells: dict
    caption = "Recipe sweep with prior preservation, mean ± sd over seeds"
    scores = MAIN_SCORES[:6]  # the shares of judged pictures
    header = ("recipe", "steps", "seeds", *scores)

    def rows(self) -> list[tuple]:
        return [(recipe, steps, len(runs), *(Spread(tuple(r[k] for r in runs)).text() for k in self.scores))
                for recipe, row in self.cells.items() for steps, runs in row.items() if runs]


def finished_run(config) -> bool:
    """Whether config.output_dir holds a finished run of this many steps (its last checkpoint and its settings) from
    the same class images (their folder names the base model's weights, so a run on an earlier model is not reused)."""
    saved = Path(config.output_dir) / "train_config.json"
    if not saved.is_file():
        return False
    settings = json.loads(saved.read_text(encoding="utf-8"))
    return (settings.get("max_train_steps") == config.max_train_steps
            and settings.get("class_data_dir") == config.class_data_dir
            and (Path(config.output_dir) / f"checkpoint-{config.max_train_steps}").is_dir())


STAMP = "judged as"  # what a kept score was judged with; a different stamp judges again


def kept_scores(folder: Path, judge: Callable[[], dict], stamp: dict | None = None) -> dict:
    """judge()'s scores (toy_dreambooth_scores' dict) kept in `folder` with the judged pictures: read back when kept
    there with the same stamp (None: whatever was kept), else judged now and kept (the scores file written last, the
    marker of a complete record)."""
    import os

    from PIL import Image

    from ..common.files import PICTURES_FILE, SCORES_FILE, write_json_atomic

    saved, pictures = Path(folder) / SCORES_FILE, Path(folder) / PICTURES_FILE
    if saved.is_file() and pictures.is_file():
        scores = json.loads(saved.read_text(encoding="utf-8"))
        if stamp is None or scores.get(STAMP) == stamp:
            scores.pop(STAMP, None)
            with np.load(pictures) as arrays:
                scores["images"] = {k: [Image.fromarray(a) for a in arrays[k]] for k in arrays.files}
            return scores
    scores = judge()
    partial = pictures.with_name(f".{PICTURES_FILE}.partial.npz")
    np.savez(partial, **{k: np.stack([np.asarray(im) for im in v]) for k, v in scores["images"].items()})
    os.replace(partial, pictures)
    kept = {k: v for k, v in scores.items() if isinstance(v, float)}
    write_json_atomic(saved, {**kept, **({STAMP: stamp} if stamp is not None else {})})
    return scores


def checkpoint_scores(pipe, checkpoint: Path, seed: int) -> dict:
    """toy_dreambooth_scores of one checkpoint's weights (swapped into `pipe`), kept in the checkpoint's folder (the
    scores and the judged pictures): a sweep run again after an interruption reads them instead of judging again."""
    from ..infer import swap_weights

    def judge() -> dict:
        swap_weights(pipe, checkpoint)
        return toy_dreambooth_scores(pipe, seed)

    return kept_scores(checkpoint, judge)


def judging_stamp(seed: int, model_file: Path) -> dict:
    """What a kept score of a run's file depends on: the seed, how many pictures are judged and with how many steps
    (the profile), and the file itself (a retrained run is judged again)."""
    from ..common.defaults import inference_steps
    from ..common.files import file_hash

    return {"seed": seed, "judged": sample_counts(), "sampling steps": inference_steps(), "file": file_hash(model_file)}


def sweep(recipes=SWEEP_RECIPES, seeds=evaluate.SEEDS, max_steps: int = SWEEP_STEPS, every: int = SWEEP_EVERY,
          progress: bool = True, save_to: Path | None = None) -> Sweep:
    """Train each recipe once per seed, keeping a checkpoint every `every` steps, and score each checkpoint
    (save_to: a JSON file rewritten after each run; each checkpoint keeps its scores, so a sweep run again after an
    interruption trains and judges only what it had not)."""
    from ..common.assets import resolve_model
    from ..common.files import write_json_atomic
    from ..infer import load_pipeline, swap_weights
    from ..train import train_dreambooth

    pipe, base = load_pipeline(evaluate.MODEL), resolve_model(evaluate.MODEL)
    result = Sweep({recipe: {step: [] for step in range(every, max_steps + 1, every)} for recipe in recipes})
    for seed in seeds:
        for recipe in recipes:
            config = recipe_config(recipe, seed, max_steps, every, progress)
            result.class_images[recipe] = config.num_class_images
            if not finished_run(config):  # a rerun after an interruption only scores what it already trained
                train_dreambooth(config, progress=progress)
            for step in result.cells[recipe]:
                checkpoint = Path(config.output_dir) / f"checkpoint-{step}"
                result.cells[recipe][step].append(checkpoint_scores(pipe, checkpoint, seed))
            if save_to is not None:
                write_json_atomic(save_to, result.to_json())
    swap_weights(pipe, base)
    return result


class Printed(str):
    """Text that a notebook shows as it is printed (not as a quoted string)."""

    def __repr__(self) -> str:
        return str(self)


def committed_prompt_following() -> Printed:
    """The model card's table of the installed toy-world model: prompt following over 3 seeds, each target met or not
    (`python -m dreambooth_nb.toyworld.evaluate`, measured when the model was installed)."""
    from ..common.assets import toy_world_dir

    summary = json.loads((toy_world_dir() / "summary.json").read_text(encoding="utf-8"))
    return Printed(summary.get("evaluation", "not measured: run `python -m dreambooth_nb.toyworld.evaluate`"))


def runs_table(models: dict[str, dict]) -> Scores:
    """The table of `python -m dreambooth_nb.toyworld.experiments` for one seed's runs (each model's
    dreambooth_scores), with the targets met or not: what a learner's own runs give."""
    return Experiments({name: [scores] for name, scores in models.items()}).table()


def committed_sweep() -> "SweepTable":
    """The table of the committed full-profile run of `python -m dreambooth_nb.toyworld.experiments --sweep`."""
    cells = json.loads((results_dir() / "sweep.json").read_text(encoding="utf-8"))["cells"]
    return SweepTable({recipe: {int(steps): runs for steps, runs in row.items()} for recipe, row in cells.items()})


def results_name(recipe: str) -> str:
    """The stem of the results of `experiments --recipe` (table, JSON, figure): experiments (chapter 06's recipe),
    experiments-<recipe>."""
    return "experiments" if recipe == CHAPTER_RECIPE else f"experiments-{slug(recipe)}"


def committed_table(detail: bool = False, recipe: str = CHAPTER_RECIPE) -> Scores:
    """The table of the committed full-profile run of `python -m dreambooth_nb.toyworld.experiments [--recipe ...]`."""
    runs = json.loads((results_dir() / f"{results_name(recipe)}.json").read_text(encoding="utf-8"))
    return Experiments(runs, recipe).table(detail)


def main(argv=None):
    """Train without and with prior preservation on the toy subject (per seed) and print the table; or run the sweep."""
    import argparse

    import matplotlib

    from ..common import runtime
    from ..common.files import save_atomic, write_json_atomic

    parser = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.experiments", description=main.__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=list(evaluate.SEEDS), help="training and sampling seeds")
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {TOY_STEPS[0]}, "
                        f"{TOY_STEPS[1]} under DREAMBOOTH_NB_FAST=1)")
    parser.add_argument("--sweep", action="store_true", help="the recipe sweep (text encoder, learning rate, prior weight, class images x steps) instead")
    parser.add_argument("--recipe", default=CHAPTER_RECIPE, choices=list(RECIPES),
                        help="the recipe of both DreamBooth runs (default: chapter 06's)")
    parser.add_argument("--results", default=None, help="folder for the table, figure and JSON "
                        "(default: the package's assets/toyworld/results, the committed copy)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    runtime.setup(show=False)
    out = Path(args.results) if args.results else results_dir()
    if args.sweep and args.recipe != CHAPTER_RECIPE:
        parser.error("--sweep trains every recipe of the sweep; --recipe chooses the one recipe of an experiment")
    if args.sweep:
        name = "sweep"
        result = sweep(seeds=args.seeds, save_to=out / "sweep.json", **({"max_steps": args.steps} if args.steps else {}))
        figure = result.contact_sheet()
    else:
        name = results_name(args.recipe)
        result = run_experiments(args.seeds, recipe=args.recipe, **({"max_train_steps": args.steps} if args.steps else {}))
        figure = result.figure()
    save_atomic(figure, out / f"{name}.png")
    write_json_atomic(out / f"{name}.json", result.to_json())
    table = result.table(detail=True)
    (out / f"{name}.txt").write_text(f"{table}\n", encoding="utf-8")
    print(table)
    return result


if __name__ == "__main__":
    main()

"""DreamBooth in the toy world, measured: the base model, DreamBooth without and with prior preservation, over seeds.

    python -m dreambooth_nb.toyworld.experiments [--seeds 0 1 2]   # trains both runs per seed, prints the table
    python -m dreambooth_nb.toyworld.experiments --sweep           # the recipe sweep: learning rate x steps
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

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
               "class kept", "class drift", "class colours (bits)")
# the targets for DreamBooth with prior preservation: score -> lowest mean
TARGETS = {"subject fidelity": 0.80, "new contexts: subject kept": 0.70, "new contexts: context right": 0.70,
           "class kept": 0.80}
SWEEP_LRS = (1e-4, 2e-4, 4e-4)
SWEEP_EVERY = 100
SWEEP_STEPS = 400
SWEEP_DIR = TOY_RUNS_DIR / "sweep"


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


def run_dir(model: str, seed: int) -> Path:
    """Where the DreamBooth run of `model` ('no prior' or 'with prior') and this seed writes."""
    return TOY_RUNS_DIR / f"{model.replace(' ', '-')}-seed{seed}"


def train_toy(prior: bool, seed: int = 0, progress: bool = True, **changes) -> Path:
    """One DreamBooth run on the toy subject (chapter 06's recipe) with this training seed; its output_dir."""
    from ..train import train_dreambooth

    name = "with prior" if prior else "no prior"
    config = toy_dreambooth_config(prior, output_dir=str(run_dir(name, seed)), seed=seed, **changes)
    train_dreambooth(config, progress=progress)
    return Path(config.output_dir)


@dataclass
class Experiments:
    """Scores per model and seed (each a dict from evaluate.dreambooth_scores) and the table over seeds."""

    runs: dict[str, list[dict]] = field(default_factory=dict)

    def spreads(self) -> dict[str, dict[str, Spread]]:
        return {name: over_seeds(runs) for name, runs in self.runs.items()}

    def table(self, detail: bool = False) -> Scores:
        """The main scores (detail=True: each new context's 'kept' and 'context right' too), mean ± sd over seeds."""
        seeds = len(next(iter(self.runs.values())))
        spreads = {name: {k: v for k, v in s.items() if detail or k in MAIN_SCORES} for name, s in self.spreads().items()}
        return Scores(spreads, caption=f"DreamBooth on the toy world, mean ± sd over {seeds} seed(s)",
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


def run_experiments(seeds=evaluate.SEEDS, progress: bool = True, **changes) -> Experiments:
    """Score the base model and DreamBooth without and with prior preservation, one training run per seed."""
    from ..common.assets import resolve_model
    from ..infer import load_pipeline, swap_weights

    pipe = load_pipeline(evaluate.MODEL)  # one pipeline: each run's weights are swapped in (one compiled sampler)
    base = resolve_model(evaluate.MODEL)
    result = Experiments({name: [] for name in MODELS})
    for seed in seeds:
        for name, prior in MODELS.items():
            swap_weights(pipe, base if prior is None else train_toy(prior, seed, progress, **changes))
            result.runs[name].append(toy_dreambooth_scores(pipe, seed))
    swap_weights(pipe, base)
    return result


# ------------------------------------------------------------------ one figure for the payoff
def judged_ok(scores: dict) -> dict[str, list[bool]]:
    """Per picture of a dreambooth_scores result: did the judge find what was asked?"""
    from .judge import load_judge

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
@dataclass
class Sweep:
    """Scores (and pictures) of checkpoints along runs at several learning rates: cells[lr][steps]."""

    cells: dict[float, dict[int, dict]]

    def table(self, detail: bool = False) -> "SweepTable":
        """One row per (learning rate, steps) with its main scores."""
        return SweepTable(self.cells)

    def contact_sheet(self, per_prompt: int = 2):
        """Rows: learning rates; columns: steps. Each cell: `a photo of sks star` on top, `a photo of a star` below."""
        import matplotlib.pyplot as plt

        from ..common.viz import image_grid

        lrs, steps = list(self.cells), sorted(next(iter(self.cells.values())))
        fig, axes = plt.subplots(len(lrs), len(steps), figsize=(1.5 * len(steps) + 0.8, 1.7 * len(lrs) + 0.6), squeeze=False)
        for r, lr in enumerate(lrs):
            for c, step in enumerate(steps):
                s, ax = self.cells[lr][step], axes[r, c]
                pictures = s["images"]["subject"][:per_prompt] + s["images"]["class"][:per_prompt]
                ax.imshow(image_grid(pictures, ncols=per_prompt, pad=1))
                ax.set_xticks([]), ax.set_yticks([])
                ax.set_title(f"subj {s['subject fidelity']:.0%} · ctx {s['recontext']:.0%}\nclass {s['class kept']:.0%}",
                             fontsize=7)
                if c == 0:
                    ax.set_ylabel(f"lr {lr:g}", fontsize=8)
                if r == len(lrs) - 1:
                    ax.set_xlabel(f"{step} steps", fontsize=8)
        fig.suptitle("Each cell: `a photo of sks star` (top), `a photo of a star` (bottom); same seeds everywhere", fontsize=9)
        fig.tight_layout()
        return fig

    def to_json(self) -> dict:
        return {f"{lr:g}": {str(st): {k: v for k, v in s.items() if isinstance(v, float)} for st, s in row.items()}
                for lr, row in self.cells.items()}


@dataclass(repr=False)
class SweepTable(Table):
    """The sweep's scores: one row per (learning rate, steps)."""

    cells: dict
    caption = "Recipe sweep with prior preservation (one seed)"
    header = ("learning rate", "steps", *MAIN_SCORES[:-1])

    def rows(self) -> list[tuple]:
        return [(f"{lr:g}", steps, *(f"{s[k]:.0%}" for k in MAIN_SCORES[:-1]))
                for lr, row in self.cells.items() for steps, s in row.items()]


def sweep(lrs=SWEEP_LRS, max_steps: int = SWEEP_STEPS, every: int = SWEEP_EVERY, prior: bool = True,
          seed: int = 0, progress: bool = True) -> Sweep:
    """Train once per learning rate, keeping a checkpoint every `every` steps, and score each checkpoint."""
    from ..common.assets import resolve_model
    from ..infer import load_pipeline, swap_weights
    from ..train import train_dreambooth

    pipe = load_pipeline(evaluate.MODEL)
    cells: dict[float, dict[int, dict]] = {}
    for lr in lrs:
        config = toy_dreambooth_config(prior, output_dir=str(SWEEP_DIR / f"lr-{lr:g}"), seed=seed, learning_rate=lr,
                                       max_train_steps=max_steps, checkpointing_steps=every, checkpoints_total_limit=None)
        train_dreambooth(config, progress=progress)
        cells[lr] = {}
        for step in range(every, max_steps + 1, every):
            swap_weights(pipe, Path(config.output_dir) / f"checkpoint-{step}")
            cells[lr][step] = toy_dreambooth_scores(pipe, seed)
    swap_weights(pipe, resolve_model(evaluate.MODEL))
    return Sweep(cells)


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


def committed_table(detail: bool = False) -> Scores:
    """The table of the committed full-profile run of `python -m dreambooth_nb.toyworld.experiments`."""
    runs = json.loads((results_dir() / "experiments.json").read_text(encoding="utf-8"))
    return Experiments(runs).table(detail)


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
    parser.add_argument("--sweep", action="store_true", help="the recipe sweep (learning rate x steps) instead")
    parser.add_argument("--results", default=None, help="folder for the table, figure and JSON "
                        "(default: the package's assets/toyworld/results, the committed copy)")
    args = parser.parse_args(argv)
    matplotlib.use("Agg")
    runtime.setup(show=False)
    out = Path(args.results) if args.results else results_dir()
    if args.sweep:
        result = sweep(seed=args.seeds[0])
        save_atomic(result.contact_sheet(), out / "sweep.png")
    else:
        result = run_experiments(args.seeds, **({"max_train_steps": args.steps} if args.steps else {}))
        save_atomic(result.figure(), out / "payoff.png")
    name = "sweep" if args.sweep else "experiments"
    write_json_atomic(out / f"{name}.json", result.to_json())
    table = result.table(detail=True)
    (out / f"{name}.txt").write_text(f"{table}\n", encoding="utf-8")
    print(table)
    return result


if __name__ == "__main__":
    main()

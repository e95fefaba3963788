"""DreamBooth in the toy world: the subject's photos, the training settings and the score table.

    python -m dreambooth_nb.toyworld.experiments [--steps N]   # trains without and with prior preservation, prints the table
"""

from __future__ import annotations

from ..common import scenes
from ..common.config import TOY_STEPS, toy_dreambooth_config
from ..common.defaults import fast_profile
from . import evaluate


def toy_samples(n: int = 8, seed: int = 0) -> tuple[list, list[str]]:
    """n pictures of the pretraining data (PIL) and their captions."""
    from PIL import Image

    images, captions, _ = scenes.dataset(n, seed)
    return [Image.fromarray(im) for im in images], captions


def toy_subject_images(n: int = 5):
    """The subject's instance photos: a purple star with yellow stripes (never seen in pretraining)."""
    return scenes.subject_images(n)


def toy_prompt_agreement(pipe, per_prompt: int | None = None) -> dict:
    """Judge agreement with 'a photo of a {colour} {shape}' prompts (1 image per prompt under the fast profile)."""
    return evaluate.prompt_agreement(pipe, per_prompt=per_prompt or (1 if fast_profile() else 4))


def toy_dreambooth_scores(pipe, n: int | None = None) -> dict:
    """Subject fidelity and class preservation scores of a (fine-tuned) toy-world pipeline."""
    return evaluate.dreambooth_scores(pipe, toy_subject_images(), n=n or (10 if fast_profile() else 20))


SCORE_COLUMNS = ("subject similarity", "subject is a star", "class is a star", "class colours", "class similarity",
                 "class like subject")


def score_text(rows: dict[str, dict]) -> str:
    """The score table as aligned plain text (for the command line)."""
    lines = [f"{'model':<12}" + "".join(f"{c:>20}" for c in SCORE_COLUMNS)]
    for name, scores in rows.items():
        cells = (f"{scores[c]:.2f}" if isinstance(scores[c], float) else str(scores[c]) for c in SCORE_COLUMNS)
        lines.append(f"{name:<12}" + "".join(f"{cell:>20}" for cell in cells))
    return "\n".join(lines)


def run_experiments(steps: int | None = None, progress: bool = True) -> dict[str, dict]:
    """Scores of the pretrained model and of DreamBooth runs without and with prior preservation."""
    from ..infer import load_pipeline, swap_weights
    from ..train import train_dreambooth

    pipe = load_pipeline(evaluate.MODEL)  # one pipeline: each run's weights are swapped in (one compiled sampler)
    rows = {"pretrained": toy_dreambooth_scores(pipe)}
    for name, prior in (("no prior", False), ("with prior", True)):
        config = toy_dreambooth_config(prior=prior, **({"max_train_steps": steps} if steps else {}))
        train_dreambooth(config, progress=progress)
        swap_weights(pipe, config.output_dir)
        rows[name] = toy_dreambooth_scores(pipe)
    return rows


def main(argv=None) -> dict[str, dict]:
    """Train without and with prior preservation on the toy subject and print the score table."""
    import argparse

    from ..common import runtime

    parser = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.experiments", description=main.__doc__)
    parser.add_argument("--steps", type=int, default=None, help=f"training steps per run (default {TOY_STEPS[0]}, "
                        f"{TOY_STEPS[1]} under DREAMBOOTH_NB_FAST=1)")
    args = parser.parse_args(argv)
    runtime.setup(show=False)
    rows = run_experiments(args.steps)
    print(score_text(rows))
    return rows


def score_table(rows: dict[str, dict]):
    """A pandas-free HTML/text table: one row per model, one column per score."""
    from IPython.display import HTML

    head = "".join(f"<th>{c}</th>" for c in ("model", *SCORE_COLUMNS))
    body = "".join("<tr><td>" + name + "</td>" + "".join(
        f"<td>{scores[c]:.2f}</td>" if isinstance(scores[c], float) else f"<td>{scores[c]}</td>" for c in SCORE_COLUMNS)
        + "</tr>" for name, scores in rows.items())
    return HTML(f"<table><tr>{head}</tr>{body}</table>")


if __name__ == "__main__":
    main()

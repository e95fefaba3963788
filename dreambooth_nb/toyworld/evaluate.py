"""Score toy-world samples with the judge: prompt agreement, subject fidelity, class preservation.

    python -m dreambooth_nb.toyworld.evaluate [--model toy-world] [--per_prompt 4]
"""

from __future__ import annotations

import argparse
from collections import Counter

import numpy as np

from ..common import defaults, scenes
from . import judge as judging

MODEL = defaults.TOY_MODEL


def prompt_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair of the toy world."""
    return [(c, s) for s in scenes.SHAPES for c in scenes.COLOURS]


def sample(pipe, prompts: list[str], seed: int = defaults.SEED, steps: int = 20, guidance: float = defaults.TOY_GUIDANCE,
           batch_size: int = defaults.SAMPLE_BATCH):
    """Images for the prompts with seeds seed, seed+1, ... (generate keeps every batch the same size)."""
    from ..sampling import generate

    return generate(pipe, list(prompts), list(range(seed, seed + len(prompts))), num_inference_steps=steps,
                    guidance_scale=guidance, batch_size=batch_size)


def prompt_agreement(pipe, judge=None, per_prompt: int = 4, **sampling) -> dict:
    """For 'a photo of a {colour} {shape}' prompts: how often the judge finds that shape and that colour."""
    judge = judge or judging.load_judge()
    pairs = [p for p in prompt_pairs() for _ in range(per_prompt)]
    images = sample(pipe, [scenes.prompt(c, s) for c, s in pairs], **sampling)
    shapes, colours = judge.shapes(images), judge.colours(images)
    shape_ok = np.array([s == p[1] for s, p in zip(shapes, pairs)])
    colour_ok = np.array([c == p[0] for c, p in zip(colours, pairs)])
    return {"images": len(images), "shape": float(shape_ok.mean()), "colour": float(colour_ok.mean()),
            "both": float((shape_ok & colour_ok).mean()), "samples": images, "pairs": pairs}


def subject_likeness(images, references, threshold: float = 0.9) -> float:
    """Share of images whose judge-feature similarity to some reference photo is above `threshold`."""
    a, b = judging.features(images), judging.features(references)
    return float(((a @ b.T).max(1) > threshold).mean())


def dreambooth_scores(pipe, instance_images, judge=None, n: int = 20, **sampling) -> dict:
    """Subject fidelity of 'a photo of sks star' and class preservation of 'a photo of a star' samples."""
    judge = judge or judging.load_judge()
    subject = sample(pipe, [scenes.SUBJECT_PROMPT] * n, **sampling)
    classes = sample(pipe, [scenes.SUBJECT_CLASS_PROMPT] * n, seed=1000, **sampling)
    class_colours = Counter(judge.colours(classes))
    return {
        "subject similarity": judging.similarity(subject, instance_images),
        "subject is a star": float(np.mean([s == "star" for s in judge.shapes(subject)])),
        "class is a star": float(np.mean([s == "star" for s in judge.shapes(classes)])),
        "class colours": len([c for c in class_colours if c != "none"]),
        "class similarity": judging.similarity(classes, instance_images),
        "class like subject": subject_likeness(classes, instance_images),
        "subject_images": subject, "class_images": classes,
    }


def main(argv=None) -> dict:
    """Print the judge's agreement with the prompts for a model."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=MODEL, help="Embedded name or a folder in diffusers layout.")
    p.add_argument("--per_prompt", type=int, default=4, help="Images per (colour, shape) prompt.")
    p.add_argument("--steps", type=int, default=20, help="Sampling steps (DPM-Solver++).")
    p.add_argument("--guidance", type=float, default=defaults.TOY_GUIDANCE, help="Classifier-free guidance scale.")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from ..common import runtime
    from ..infer import load_pipeline

    runtime.setup(show=False, seed=args.seed)
    scores = prompt_agreement(load_pipeline(args.model), per_prompt=args.per_prompt, steps=args.steps,
                              guidance=args.guidance, seed=args.seed)
    print(f"{scores['images']} images of 'a photo of a <colour> <shape>' ({len(prompt_pairs())} prompts), "
          f"{args.steps} steps, guidance {args.guidance}:")
    for key in ("shape", "colour", "both"):
        print(f"  judge agrees on {key:<6} {scores[key]:6.1%}")
    print(f"  judge on fresh generator pictures: {judging.accuracy(judging.load_judge())}")
    return scores


if __name__ == "__main__":
    main()

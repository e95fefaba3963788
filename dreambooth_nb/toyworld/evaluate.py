"""Score toy-world samples with the judge: does a model follow its prompts, keep the subject in new contexts,
and keep the meaning of the class word? Every score is a share of judged pictures; over several seeds it is
reported as mean +- spread (the standard deviation over seeds).

    python -m dreambooth_nb.toyworld.evaluate [--model toy-world] [--seeds 0 1 2] [--n 100]
"""

from __future__ import annotations

import argparse
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from ..common import defaults, scenes
from ..common.tables import Table
from ..common import judge as judging

MODEL = defaults.TOY_MODEL
SEEDS = (0, 1, 2)
FRESH = 10_000  # evaluation captions come from seeds FRESH + seed: never the pretraining data's
NOTHING_SAID = {"colour": 0.0, "size": 0.0, "place": 0.0, "background": 0.0}
# contexts none of the subject's photos shows (scenes.subject_scenes): DreamBooth's "recontextualisation"
NEW_CONTEXTS = {"on a red background": dict(background="red"), "on an orange background": dict(background="orange"),
                "small": dict(size_word="small"), "on the left": dict(place="left"), "at the top": dict(place="top")}


@dataclass(frozen=True)
class Spread:
    """One score measured over several seeds: its values, mean and standard deviation."""

    values: tuple

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else 0.0

    def text(self, percent: bool = True) -> str:
        """'92 +- 3 %' (a share) or '2.41 +- 0.05' (another number)."""
        if percent:
            return f"{100 * self.mean:.0f} ± {100 * self.sd:.0f} %"
        return f"{self.mean:.2f} ± {self.sd:.2f}"

    def __str__(self) -> str:
        return self.text()


def over_seeds(runs: list[dict]) -> dict[str, Spread]:
    """{score: Spread} from one {score: value} dict per seed (numbers only; pictures and lists are left out)."""
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))]
    return {k: Spread(tuple(float(r[k]) for r in runs)) for k in keys}


def sample(pipe, prompts: list[str], seed: int = defaults.SEED, steps: int | None = None,
           guidance: float = defaults.TOY_GUIDANCE, batch_size: int = 8, bar=None):
    """Images for the prompts with seeds seed, seed+1, ... (steps: 25, or 10 under the test profile; generate keeps
    every batch the same size); `bar`, a progress bar, advances by each batch drawn."""
    from ..sampling import generate

    prompts, images = list(prompts), []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        images += generate(pipe, chunk, list(range(seed + start, seed + start + len(chunk))), num_inference_steps=steps,
                           guidance_scale=guidance, batch_size=batch_size)
        if bar is not None:
            bar.update(len(chunk))
    return images


def read(pipe, asked: list[scenes.Scene], seed: int, name: str | None = None, judge=None, **sampling):
    """(verdicts, images) for pictures drawn from the scenes' captions (`name` replaces the colour word)."""
    judge = judge or judging.load_judge()
    images = sample(pipe, [s.caption(name) for s in asked], seed=seed, **sampling)
    return judge.read(images), images


@contextmanager
def judging_bar(pictures: int, progress: bool = True):
    """A progress bar over the pictures a measurement draws and judges (closed when it ends)."""
    from ..common.viz import progress_bar

    bar = progress_bar(pictures, "drawing and judging", unit="img", disable=not progress)
    try:
        yield bar
    finally:
        bar.close()


def fresh_scenes(n: int, seed: int = 0, **fixed) -> list[scenes.Scene]:
    """n random scenes the pretraining never drew (same generator, other seeds)."""
    return scenes.scenes(n, seed=FRESH + seed, **fixed)


def colourless_scenes(per_shape: int, seed: int = 0) -> list[scenes.Scene]:
    """Scenes captioned 'a photo of a <shape>' and nothing else, per_shape of each shape."""
    return [s for shape in scenes.SHAPES for s in fresh_scenes(per_shape, seed, shape=shape, say=NOTHING_SAID)]


def prompt_following(pipe, seed: int = 0, n: int = 100, per_shape: int = 8, judge=None, progress: bool = True,
                     **sampling) -> dict:
    """How often the model draws what fresh captions name: shape, colour, background, size, place, each over the
    captions that name it; 'shape alone' over captions that name only the shape ('a photo of a star')."""
    judge = judge or judging.load_judge()
    asked, plain = fresh_scenes(n, seed), colourless_scenes(per_shape, seed)
    with judging_bar(len(asked) + len(plain), progress) as bar:
        verdicts, images = read(pipe, asked, 100_000 * seed, judge=judge, bar=bar, **sampling)
        plain_verdicts, plain_images = read(pipe, plain, 100_000 * seed + 50_000, judge=judge, bar=bar, **sampling)
    scores = judging.agreement(verdicts, asked)
    scores["shape alone"] = float(np.mean([v.shape == s.shape for v, s in zip(plain_verdicts, plain)]))
    return {**scores, "images": images, "captions": [s.caption() for s in asked], "verdicts": verdicts,
            "shape alone images": plain_images}


PROBE_BACKGROUNDS = ("white", "black", "blue", "green", "yellow")  # the background probe's words
PROBE_OBJECTS = (("red", "circle"), ("orange", "square"), ("purple", "heart"), ("red", "star"))


def context_probe(per_object: int = 2) -> dict[str, list[scenes.Scene]]:
    """Prompts that differ only in one context word, for a fixed seed each: {'background': [...], 'place': [...]},
    grouped by seed (every group of len(PROBE_BACKGROUNDS) or len(PLACES) scenes shares one starting noise)."""
    groups = {"background": [], "place": []}
    for colour, shape in PROBE_OBJECTS * per_object:
        groups["background"].append([scenes.Scene(shape, colour, b, 10.0, 16.0, 16.0, say_background=True)
                                     for b in PROBE_BACKGROUNDS])
        groups["place"].append([scenes.Scene(shape, colour, "white", 7.0, *PLACED_CENTRES[p], place=p)
                                for p in scenes.PLACES])
    return groups


def context_following(pipe, seed: int = 0, per_object: int = 2, judge=None, **sampling) -> dict:
    """Does a context word set the context? For each group of prompts that differ only in the background word (or
    only in the place words), all drawn from one starting noise: the share of pictures whose background (place) is
    the one asked, and how many different backgrounds one noise gives (1: the noise decides, 5: the words do)."""
    from ..sampling import generate

    judge = judge or judging.load_judge()
    out = {}
    for kind, groups in context_probe(per_object).items():
        images, verdicts = [], []
        for g, group in enumerate(groups):
            pictures = generate(pipe, [s.caption() for s in group], [1000 * seed + g] * len(group),
                                num_inference_steps=sampling.get("steps"),
                                guidance_scale=sampling.get("guidance", defaults.TOY_GUIDANCE),
                                batch_size=len(group))
            images.append(pictures)
            verdicts.append(judge.read(pictures))
        flat = [(v, s) for vs, group in zip(verdicts, groups) for v, s in zip(vs, group)]
        if kind == "background":
            out["background follows"] = float(np.mean([v.background == s.background for v, s in flat]))
            out["backgrounds per noise"] = float(np.mean([len({v.background for v in vs}) for vs in verdicts]))
        else:
            out["place follows"] = float(np.mean([s.place in v.places for v, s in flat]))
        out[f"{kind} images"] = images
    return out


def identifier_distance(tokenizer, text_encoder, identifier: str = scenes.IDENTIFIER,
                        with_it: str = scenes.SUBJECT_PROMPT, without: str = scenes.SUBJECT_CLASS_PROMPT) -> dict:
    """How far the text encoder puts the identifier's prompt from the class prompt: the relative distance of their
    encoder outputs, ||a - b|| / ||b||, with a colour word beside it for scale ('a photo of a purple star'), and the
    norm of the identifier's token embedding next to the article's and the colour word's."""
    import mindspore as ms

    from ..models import tokenize

    def features(prompt: str) -> np.ndarray:
        return text_encoder(ms.Tensor(tokenize(tokenizer, prompt)))[0].asnumpy()[0]

    def norm(word: str) -> float:
        table = text_encoder.get_input_embeddings().embedding_table.asnumpy()
        return float(np.linalg.norm(table[tokenizer.convert_tokens_to_ids(f"{word}</w>")]))

    base = features(without)
    distance = float(np.linalg.norm(features(with_it) - base) / np.linalg.norm(base))
    colour = float(np.linalg.norm(features(scenes.prompt(scenes.SUBJECT["colour"], scenes.SUBJECT["shape"])) - base)
                   / np.linalg.norm(base))
    return {"identifier distance": distance, "colour word distance": colour, f"{identifier} norm": norm(identifier),
            "'a' norm": norm("a"), f"'{scenes.SUBJECT['colour']}' norm": norm(scenes.SUBJECT["colour"])}


PLACED_CENTRES = {"left": (8.0, 16.0), "right": (24.0, 16.0), "top": (16.0, 8.0), "bottom": (16.0, 24.0), "": (16.0, 16.0)}


def subject_scene(**context) -> scenes.Scene:
    """What `a photo of sks star[ <context>]` asks for: the subject, in a context when one is given. Drawn with
    scenes.draw it is a correct answer (the tests judge such drawings)."""
    background, size_word, place = context.get("background", ""), context.get("size_word", ""), context.get("place", "")
    radius = {"small": 7.5, "big": 12.0}.get(size_word, 8.0 if place else 10.0)
    x, y = PLACED_CENTRES[place]
    base = scenes.Scene("star", "", background or "white", radius, x, y, size_word=size_word, place=place,
                        say_background=bool(background))
    return scenes.as_subject(base)


def subject_prompts() -> dict[str, str]:
    """{label: prompt} for the subject alone and in each new context."""
    asked = {"subject": subject_scene(), **{label: subject_scene(**c) for label, c in NEW_CONTEXTS.items()}}
    return {label: s.caption(scenes.IDENTIFIER) for label, s in asked.items()}


def class_scene() -> scenes.Scene:
    """What the class prompt `a photo of a star` asks for: a star, any colour, anywhere."""
    return scenes.Scene(scenes.SUBJECT["shape"], "", "white", 10.0, scenes.SIZE / 2, scenes.SIZE / 2, say_colour=False)


def striped(verdict: judging.Verdict) -> bool:
    """The class never has stripes in the toy world: a striped picture took them from the subject."""
    return verdict.pattern != "plain"


def colour_entropy(verdicts: list[judging.Verdict]) -> float:
    """Colour diversity in bits: the entropy of the judged colours (log2 6 = 2.58 when all six are equally common)."""
    counts = np.array([c for colour, c in Counter(v.colour for v in verdicts).items() if colour != "none"], float)
    if counts.sum() == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def class_scores(verdicts: list[judging.Verdict]) -> dict[str, float]:
    """For samples of the class prompt: a plain class member (a star without stripes), drift toward the subject
    (stripes), and colour diversity."""
    return {"class kept": float(np.mean([v.shape == "star" and not striped(v) for v in verdicts])),
            "class drift": float(np.mean([striped(v) or v.is_subject for v in verdicts])),
            "class colours (bits)": colour_entropy(verdicts)}


def dreambooth_scores(pipe, seed: int = 0, n: int = 16, per_context: int = 8, judge=None, progress: bool = True,
                      **sampling) -> dict:
    """Subject fidelity, recontextualisation (subject kept and context right, per new context and on average) and
    class preservation for one seed; the pictures come along under 'images'."""
    with judging_bar(2 * n + per_context * len(NEW_CONTEXTS), progress) as bar:
        return judged_dreambooth_scores(pipe, seed, n, per_context, judge, bar=bar, **sampling)


def judged_dreambooth_scores(pipe, seed: int, n: int, per_context: int, judge, **sampling) -> dict:
    """dreambooth_scores' measurement (sampling: what evaluate.sample takes, its progress bar included)."""
    judge = judge or judging.load_judge()
    first = 100_000 * seed + 70_000
    subject, subject_images = read(pipe, [subject_scene()] * n, first, scenes.IDENTIFIER, judge, **sampling)
    scores = {"subject fidelity": float(np.mean([v.is_subject for v in subject]))}
    images = {"subject": subject_images}
    both = []
    for k, (label, context) in enumerate(NEW_CONTEXTS.items()):
        asked = subject_scene(**context)
        verdicts, images[label] = read(pipe, [asked] * per_context, first + 1000 * (k + 1), scenes.IDENTIFIER, judge,
                                       **sampling)
        oks = [v.agrees(asked) for v in verdicts]
        kept = [ok["subject"] for ok in oks]
        right = [all(x for key, x in ok.items() if key not in ("shape", "subject")) for ok in oks]
        scores[f"kept {label}"] = float(np.mean(kept))
        scores[f"context {label}"] = float(np.mean(right))
        both += [a and b for a, b in zip(kept, right)]
    scores["recontext"] = float(np.mean(both))
    scores["new contexts: subject kept"] = float(np.mean([scores[f"kept {label}"] for label in NEW_CONTEXTS]))
    scores["new contexts: context right"] = float(np.mean([scores[f"context {label}"] for label in NEW_CONTEXTS]))
    classes, images["class"] = read(pipe, [class_scene()] * n, first + 9000, None, judge, **sampling)
    scores.update(class_scores(classes))
    scores["identifier distance"] = identifier_distance(pipe.tokenizer, pipe.text_encoder)["identifier distance"]
    return {**scores, "images": images}


def is_share(score: str) -> bool:
    """Scores are shares of judged pictures, shown in percent, but for the few that count something else."""
    return "bits" not in score and "per noise" not in score and "distance" not in score


class Scores(Table):
    """Scores over seeds as a table: one row per score, one column per model, 'mean +- sd'."""

    header: tuple = ()

    def __init__(self, models: dict[str, dict[str, Spread]], caption: str = "", targets: dict[str, str] | None = None):
        self.models = models
        self.caption = caption
        self.targets = targets or {}
        self.header = ("score", *models, *(("target",) if self.targets else ()))

    def rows(self) -> list[tuple]:
        keys = list(dict.fromkeys(k for spreads in self.models.values() for k in spreads))
        return [(k, *(m[k].text(percent=is_share(k)) if k in m else "" for m in self.models.values()),
                 *((self.targets.get(k, ""),) if self.targets else ())) for k in keys]


# the base model's targets: the lowest mean over seeds of each score
BASE_TARGETS = {"shape": 0.95, "colour": 0.95, "background": 0.85, "size": 0.85, "place": 0.85, "shape alone": 0.90,
                "background follows": 0.90}


def base_target_verdicts(spreads: dict[str, Spread]) -> dict[str, str]:
    """Each base-model target said as met or not met (the mean over seeds against its lowest share)."""
    return {key: f">= {lowest * 100:.0f} %: {'met' if spreads[key].mean >= lowest else 'not met'}"
            for key, lowest in BASE_TARGETS.items() if key in spreads}


def prompt_following_table(model: str = MODEL, seeds=SEEDS, n: int = 100, per_shape: int = 8,
                           steps: int = defaults.INFERENCE_STEPS,
                           guidance: float = defaults.TOY_GUIDANCE, pipe=None) -> Scores:
    """How well a model follows fresh captions, per attribute, and whether one starting noise gives the background
    and the place each prompt asks (the context probe): mean ± sd over seeds, each target met or not (the model
    card's table)."""
    from ..infer import load_pipeline

    pipe, judge = pipe or load_pipeline(model), judging.load_judge()
    kw = dict(steps=steps, guidance=guidance)
    runs = [{**prompt_following(pipe, seed, n, per_shape, judge, **kw), **context_following(pipe, seed, judge=judge, **kw)}
            for seed in seeds]
    spreads = over_seeds(runs)
    return Scores({"judge agrees": spreads}, targets=base_target_verdicts(spreads), caption=(
        f"{n} fresh captions and {len(scenes.SHAPES) * per_shape} 'a photo of a <shape>' per seed, seeds "
        f"{list(seeds)}, {steps} DPM-Solver++ steps, guidance {guidance}; context probe: "
        f"{2 * len(PROBE_OBJECTS)} starting noises x {len(PROBE_BACKGROUNDS)} background words and x "
        f"{len(scenes.PLACES)} places per seed:"))


def main(argv=None) -> Scores:
    """Print how well a model follows its prompts, per attribute, over seeds."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=MODEL, help="Embedded name or a folder in diffusers layout.")
    p.add_argument("--n", type=int, default=100, help="Fresh captions per seed.")
    p.add_argument("--per_shape", type=int, default=8, help="'a photo of a <shape>' pictures per shape and seed.")
    p.add_argument("--steps", type=int, default=defaults.INFERENCE_STEPS, help="Sampling steps (DPM-Solver++).")
    p.add_argument("--guidance", type=float, default=defaults.TOY_GUIDANCE, help="Classifier-free guidance scale.")
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    args = p.parse_args(argv)
    from ..common import runtime

    runtime.setup(show=False)
    table = prompt_following_table(args.model, args.seeds, args.n, args.per_shape, args.steps, args.guidance)
    print(table)
    return table


if __name__ == "__main__":
    main()

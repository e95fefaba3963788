"""DreamBooth pilot for the toy world: one training seed with prior preservation, a variant of the subject's photos or
of the recipe; prints the chapter-06 scores and what the judge reads in each failing context, and saves the payoff
figure to outputs/pilots/NAME.png.

    VARIANT='{"radii": [8.5, 10.5]}' NAME=big-photos python pretraining/toyworld-v6/dreambooth_pilot.py
    VARIANT='{"radii": [8.5, 10.5], "recipe": "class images judged plain stars"}' NAME=big-photos-frozen python ...

    VARIANT='{"small": [1, 3], "recipe": "prior weight 0.5", "seed": 0}' NAME=some-small-0 python ...
    VARIANT='{"recipe": "prior weight 0.5", "changes": {"num_class_images": 100}, "seed": 0}' NAME=class-100-0 python ...

    VARIANT='{"recipe": "prior weight 0.5", "instance_timesteps": [0, 600], "seed": 0}' NAME=instance-t600-0 python ...

VARIANT keys: radii (the photos' subject radii), offsets, small (which of the five photos are redrawn small, 7-8 px),
steps (600), seed (0), recipe (experiments.BOTH: judged class images, text encoder trained), changes (TrainConfig
fields), prior (true), instance_timesteps ([low, high): the instance half's timesteps drawn from that range only, the
class half's from the whole schedule).
"""
import collections
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

import dreambooth_nb as db
from dreambooth_nb.common import scenes

db.setup(device="CPU", show=False)
variant = json.loads(os.environ.get("VARIANT", "{}"))
if "radii" in variant:  # the photos change, so their cache key must too
    scenes.SUBJECT_RADII = tuple(variant["radii"])
    scenes.VERSION = 100 + int(10 * variant["radii"][0])
if "offsets" in variant:
    scenes.SUBJECT_OFFSETS = tuple(variant["offsets"])
if "small" in variant:  # a casual set with some small photos: these ones redrawn at the size "small" asks for
    drawn_as_shipped = scenes.subject_scenes

    def some_small(n: int = 5, seed: int = 1234) -> list:
        rng = np.random.default_rng(99)
        return [dataclasses.replace(s, radius=float(rng.uniform(*scenes.RADII["small"]))) if i in variant["small"] else s
                for i, s in enumerate(drawn_as_shipped(n, seed))]

    scenes.subject_scenes = some_small
    scenes.VERSION = 200 + sum(2 ** i for i in variant["small"])

if "instance_timesteps" in variant:  # the photos taught only at these noise levels; the class images at all of them
    from dreambooth_nb import batches

    low, high = variant["instance_timesteps"]
    whole_schedule = batches.BatchMaker.__call__

    def instance_half_in_range(self, step: int):
        *inputs, timesteps = whole_schedule(self, step)
        rng = np.random.default_rng([self.seed, step, 2, self.rank])
        n = self.config.train_batch_size
        timesteps[:n] = rng.integers(low, high, (n,)).astype(np.int32)
        return (*inputs, timesteps)

    batches.BatchMaker.__call__ = instance_half_in_range

from dreambooth_nb.common.judge import load_judge  # noqa: E402  (after the scene settings above)
from dreambooth_nb.infer import load_pipeline, swap_weights  # noqa: E402
from dreambooth_nb.toyworld import evaluate, experiments as ex  # noqa: E402

name = os.environ.get("NAME", "pilot")
out = Path("outputs/pilots") / name
judge = load_judge()
photos = scenes.subject_images(5)
print("photos read:", [(v.size, round(v.radius, 1), v.is_subject) for v in judge.read(photos)])
start = time.time()
if not (out / "model_index.json").is_file():
    ex.train_toy(variant.get("prior", True), int(variant.get("seed", 0)), False, variant.get("recipe", ex.BOTH),
                 max_train_steps=int(variant.get("steps", 600)), output_dir=str(out), **variant.get("changes", {}))
print("trained", out, round(time.time() - start), "s", flush=True)
pipe = load_pipeline(evaluate.MODEL)
swap_weights(pipe, out)
scores = ex.toy_dreambooth_scores(pipe, int(variant.get("seed", 0)))
print(name, {k: round(v, 2) for k, v in scores.items() if isinstance(v, float)})
for label, images in scores["images"].items():
    readings = judge.read(images)
    print(label, collections.Counter((v.shape, v.colour, v.pattern, v.size, v.background) for v in readings)
          .most_common(3))
ex.payoff_figure({name: scores}).savefig(out.parent / f"{name}.png", dpi=80)
print("elapsed", round(time.time() - start), "s")

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
class half's from the whole schedule), class_contexts (the class images drawn from captions that say a size, a place
and a background as often as the pretraining captions do, each image trained with its own caption, instead of all
from `a photo of a star`), instance_captions (each photo trained with a caption that says its background, `a photo
of sks star on a gray background`, instead of all with `a photo of sks star`).

    VARIANT='{"recipe": "prior weight 0.25", "class_contexts": true, "seed": 0}' NAME=class-contexts-0 python ...
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

if variant.get("class_contexts") or variant.get("instance_captions"):  # images trained with their own captions
    from dreambooth_nb import batches, prior
    from dreambooth_nb.common import defaults

    def class_captions(n: int, seed: int = 7) -> list[str]:
        """`a photo of a [small|big] star[ <place>][ on a <colour> background]`, each part said as often as in
        pretraining (scenes.SAY); the colour never said, as in the class prompt."""
        rng = np.random.default_rng(seed)
        said = lambda part: rng.random() < scenes.SAY[part]  # noqa: E731
        return [scenes.prompt("", "star", str(rng.choice(["small", "big"])) if said("size") else "",
                              str(rng.choice(list(scenes.BACKGROUNDS))) if said("background") else "",
                              str(rng.choice(list(scenes.PLACES))) if said("place") else "") for _ in range(n)]

    def draw_captioned_class_images(folder: Path, n: int) -> None:
        """n class images of class_captions(n) by the base model, named in order, with captions.json beside them."""
        from dreambooth_nb.infer import load_pipeline as load
        from dreambooth_nb.sampling import generate
        from dreambooth_nb.toyworld import evaluate as ev

        if (folder / "captions.json").is_file():
            return
        folder.mkdir(parents=True, exist_ok=True)
        texts, pipe, names = class_captions(n), load(ev.MODEL), {}
        for start in range(0, n, 8):
            chunk = texts[start:start + 8]
            for i, image in enumerate(generate(pipe, chunk, [defaults.SEED + start + i for i in range(len(chunk))],
                                               batch_size=8)):
                name = f"class-{start + i:04d}.png"
                image.save(folder / name)
                names[name] = chunk[i]
        (folder / "captions.json").write_text(json.dumps(names, indent=1))

    plain_image_set = prior.load_image_set

    def captioned_image_set(folder, prompt, tokenizer, resolution, limit=None, max_length=None):
        """The folder's images, each with its own caption's tokens when captions.json says them."""
        from dreambooth_nb.data import check_images
        from dreambooth_nb.models import tokenize_with_mask

        images = plain_image_set(folder, prompt, tokenizer, resolution, limit, max_length)
        captions_file = Path(folder) / "captions.json"
        if variant.get("instance_captions") and "sks" in prompt:  # each photo's caption says its background
            said = [scenes.prompt("sks", "star", background=scenes.background_name(im)) for im in images.images]
            print("the photos' captions:", said)
            pairs = [tokenize_with_mask(tokenizer, text, max_length) for text in said]
            images.input_ids = np.concatenate([ids for ids, _ in pairs])
            images.attention_mask = np.concatenate([mask for _, mask in pairs])
        elif captions_file.is_file():
            said = json.loads(captions_file.read_text())
            paths = check_images(folder, resolution).require_usable()[:limit]
            pairs = [tokenize_with_mask(tokenizer, said[p.name], max_length) for p in paths]
            images.input_ids = np.concatenate([ids for ids, _ in pairs])
            images.attention_mask = np.concatenate([mask for _, mask in pairs])
        return images

    prior.load_image_set = captioned_image_set

    def examples_with_own_captions(self, step, rng, center_crop):
        pixels, ids, masks = [], [], []
        for images, seed, embedding in self.halves():
            idx = batch_indices(len(images), self.config.train_batch_size, seed, step, self.rank, self.world)
            pixels.append(batches.make_pixels(images, idx, self.config.resolution, center_crop, rng))
            own = len(images.input_ids) == len(images) > 1
            masks.append(images.attention_mask[idx] if own else np.repeat(images.attention_mask, len(idx), axis=0))
            ids.append(images.input_ids[idx] if own else np.repeat(images.input_ids, len(idx), axis=0))
        return np.concatenate(pixels), np.concatenate(ids), np.concatenate(masks)

    batch_indices = batches.batch_indices
    batches.BatchMaker.examples = examples_with_own_captions

from dreambooth_nb.common.judge import load_judge  # noqa: E402  (after the scene settings above)
from dreambooth_nb.infer import load_pipeline, swap_weights  # noqa: E402
from dreambooth_nb.toyworld import evaluate, experiments as ex  # noqa: E402

name = os.environ.get("NAME", "pilot")
out = Path("outputs/pilots") / name
judge = load_judge()
photos = scenes.subject_images(5)
print("photos read:", [(v.size, round(v.radius, 1), v.is_subject) for v in judge.read(photos)])
start = time.time()
changes = dict(variant.get("changes", {}))
if variant.get("class_contexts"):
    class_folder = Path("outputs/pilots/class-images-with-contexts")
    draw_captioned_class_images(class_folder, int(changes.get("num_class_images", 48)))
    changes.update(class_data_dir=str(class_folder), num_class_images=48)
if not (out / "model_index.json").is_file():
    ex.train_toy(variant.get("prior", True), int(variant.get("seed", 0)), False, variant.get("recipe", ex.BOTH),
                 max_train_steps=int(variant.get("steps", 600)), output_dir=str(out), **changes)
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

"""The toy world: captioned pictures of one coloured shape in a context, drawn with PIL, deterministic from a seed.

A scene is a shape (circle, square, triangle, star, heart) in a colour, at a size and a place, on a plain
background. Its caption names the shape and, each with its own chance, the colour, the size (small/big),
the place (left/right/top/bottom) and the background, so the model learns every word on its own and
`a photo of a star` (no colour) means "a star of any colour". The DreamBooth subject, a purple star with
yellow stripes, never appears in the pretraining data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw
from .errors import InputError

VERSION = 5  # bumped when the pictures change (cached photos and class images are made again)
SIZE = 32  # pixels per side of every toy-world picture
SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
    "yellow": (240, 220, 40), "orange": (245, 140, 20), "purple": (140, 50, 180),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), **COLOURS}
# radius ranges in pixels (a 32 px picture): a size word picks its range, no word picks any radius. Nothing is
# smaller than 7 px: below that the VAE's 16x16 latent cannot hold a star's points (round trips judged the right
# shape: stars 26 % at radius 5, 71 % at 6, 97 % at 7; other shapes 93 %, 99 %, 99 %).
RADII = {"small": (7.0, 8.0), "big": (11.0, 13.5), "": (7.0, 13.5)}
# a shape said to be on the left (...) keeps its centre on that side, so it is at most this big
PLACED_RADII = {"small": (7.0, 8.0), "big": (10.0, 10.8), "": (7.0, 9.0)}
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
PLACE_LIMIT = 11.0  # a placed shape's centre is at most this far from its side (the judge's line is at 13)
WORDS = ("a an photo of on at the background sks left right top bottom "
         + " ".join([*SHAPES, *BACKGROUNDS, "small", "big"])).split()
# how often a caption names each attribute (the shape is always named)
SAY = {"colour": 0.7, "size": 0.5, "place": 0.5, "background": 0.5}
# Rare words, each the name of one plain thing (like a pet's name in a web caption: "a photo of zwx heart" is always
# the same green heart), said in NAMED of the pretraining captions instead of the colour. The text encoder learns that
# such a word carries meaning, so its features for a name differ from the article's. `sks`, DreamBooth's identifier,
# is one of them and the rarest (SKS_WEIGHT of the others' share): real CLIP has seen `sks` rarely, so its embedding is
# trained but its prior weak, which is why the paper picks a rare token.
NAMES = ("sks zwx qlo vrk bpf dmt xjn hgw tcv fyr kzu wqp jvd lxb nrg ocm pzh uky gdw ybt").split()
NAMED = 0.04
SKS_WEIGHT = 0.25
VOCABULARY = tuple(dict.fromkeys(WORDS + NAMES))  # every word a toy-world tokenizer knows as one token


@dataclass(frozen=True)
class Scene:
    """Everything needed to draw one picture and write its caption."""

    shape: str
    colour: str
    background: str
    radius: float
    x: float
    y: float
    angle: float = 0.0
    size_word: str = ""  # "small", "big" or "" (not said)
    place: str = ""  # "left", "right", "top", "bottom" or "" (not said)
    say_colour: bool = True
    say_background: bool = False
    pattern: str = ""  # "" (plain) or "stripes:<colour>"; only DreamBooth subjects use patterns
    name: str = ""  # a rare word naming this very thing (scenes.NAMES), said instead of the colour

    def caption(self, name: str | None = None) -> str:
        """'a photo of a [small|big] [<colour>] <shape>[ on the left|...][ on a <background> background]'.

        name replaces the colour word (the subject's identifier: 'a photo of sks star').
        """
        name = name if name is not None else (self.name or None)
        colour = name if name is not None else (self.colour if self.say_colour else "")
        return prompt(colour, self.shape, self.size_word, self.background if self.say_background else "", self.place)


def article(word: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def prompt(colour: str = "", shape: str = "", size_word: str = "", background: str = "", place: str = "") -> str:
    """A toy-world caption: prompt('red', 'star') == 'a photo of a red star'; a name (the identifier 'sks', or any of
    NAMES) takes no article: 'a photo of sks star'."""
    words = [w for w in (size_word, colour, shape) if w]
    lead = "" if words[0] in NAMES else f"{article(words[0])} "
    text = f"a photo of {lead}" + " ".join(words)
    if place:
        text += f" {PLACES[place]}"
    return text + (f" on {article(background)} {background} background" if background else "")


def polygon(shape: str, x: float, y: float, r: float, angle: float = 0.0) -> list[tuple[float, float]]:
    """Corner points of a shape of 'radius' r centred at (x, y), turned by `angle` radians."""
    if shape == "circle":
        ts = np.linspace(0, 2 * math.pi, 32, endpoint=False)
        pts = [(math.cos(t), math.sin(t)) for t in ts]
    elif shape == "square":
        pts = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif shape == "triangle":
        pts = [(math.cos(t), math.sin(t)) for t in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    elif shape == "star":
        pts = [((1.0 if i % 2 == 0 else 0.42) * math.cos(-math.pi / 2 + i * math.pi / 5),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(-math.pi / 2 + i * math.pi / 5)) for i in range(10)]
    elif shape == "heart":
        ts = np.linspace(0, 2 * math.pi, 40, endpoint=False)
        pts = [(16 * math.sin(t) ** 3 / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t)
                                              - math.cos(4 * t)) / 17 + 0.1) for t in ts]
    else:
        raise InputError(f"Unknown shape {shape!r}; the toy world knows {', '.join(SHAPES)}.")
    c, s = math.cos(angle), math.sin(angle)
    return [(x + r * (px * c - py * s), y + r * (px * s + py * c)) for px, py in pts]


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    """Render a scene as an RGB image of size x size (drawn 4x larger, then reduced, for smooth edges); the scene's
    coordinates are those of a SIZE-pixel picture, scaled to `size`."""
    k = 4 * size / SIZE
    image = Image.new("RGB", (size * 4, size * 4), BACKGROUNDS[scene.background])
    pts = polygon(scene.shape, scene.x * k, scene.y * k, scene.radius * k, scene.angle)
    ImageDraw.Draw(image).polygon(pts, fill=COLOURS[scene.colour])
    if scene.pattern.startswith("stripes:"):
        image = add_stripes(image, pts, COLOURS[scene.pattern.split(":")[1]], period=round(stripe_period(scene.radius) * k),
                            angle=scene.angle, centre=(scene.x * k, scene.y * k))
    return image.resize((size, size), Image.LANCZOS)


def stripe_period(radius: float) -> int:
    """Pixels from one stripe to the next on a patterned shape: about 4 stripes across it, each at least 4 px wide
    (narrower ones are lost in the 2x2-pixel cells of the VAE's latents)."""
    return max(8, round(radius * 0.8))


def add_stripes(image: Image.Image, pts, colour: tuple, period: int, angle: float = 0.0,
                centre: tuple[float, float] = (0.0, 0.0)) -> Image.Image:
    """Paint stripes of `colour` inside the polygon `pts`, turned with the shape by `angle` radians; one stripe edge
    runs through the shape's centre, so even a small shape shows both colours."""
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    n = image.size[1]
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    across = -(xx - centre[0]) * math.sin(angle) + (yy - centre[1]) * math.cos(angle)  # along the shape's vertical axis
    stripes = ((across // (period / 2)) % 2 == 1).astype(np.uint8) * 255
    both = Image.fromarray(np.minimum(np.asarray(mask), stripes))
    image.paste(Image.new("RGB", image.size, colour), (0, 0), both)
    return image


def place_centre(rng: np.random.Generator, radius: float, place: str, size: int = SIZE) -> tuple[float, float]:
    """A centre where a shape of `radius` fits inside the picture, on the named side when `place` is given."""
    low, high = radius + 1, size - radius - 1
    x, y = (float(v) for v in rng.uniform(low, high, 2))
    limit = PLACE_LIMIT * size / SIZE
    if place == "left":
        x = float(rng.uniform(low, max(low, limit)))
    elif place == "right":
        x = float(rng.uniform(min(high, size - limit), high))
    elif place == "top":
        y = float(rng.uniform(low, max(low, limit)))
    elif place == "bottom":
        y = float(rng.uniform(min(high, size - limit), high))
    return x, y


def random_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 size: int = SIZE, say: dict | None = None) -> Scene:
    """A random scene (shape and colour fixed when given); the background is never the object's colour."""
    say = {**SAY, **(say or {})}
    shape = shape or str(rng.choice(SHAPES))
    colour = colour or str(rng.choice(list(COLOURS)))
    background = str(rng.choice([b for b in BACKGROUNDS if b != colour]))
    size_word = str(rng.choice(["small", "big"])) if rng.random() < say["size"] else ""
    place = str(rng.choice(list(PLACES))) if rng.random() < say["place"] else ""
    low, high = (PLACED_RADII if place else RADII)[size_word]
    radius = float(rng.uniform(low, high)) * size / SIZE
    x, y = place_centre(rng, radius, place, size)
    angle = float(rng.uniform(-0.3, 0.3)) if shape != "circle" else 0.0
    return Scene(shape, colour, background, radius, x, y, angle, size_word, place,
                 bool(rng.random() < say["colour"]), bool(rng.random() < say["background"]))


def scenes(n: int, seed: int = 0, **fixed) -> list[Scene]:
    """n random scenes, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **fixed) for _ in range(n)]


def with_random_stripes(made: list[Scene], share: float, seed: int) -> list[Scene]:
    """The scenes, a `share` of them striped in another palette colour (as a DreamBooth subject can be): pictures for
    what must read or encode any object (the judge, the VAE), never for the captioned data."""
    rng = np.random.default_rng(seed)
    out = []
    for s in made:
        if rng.random() < share:
            other = [c for c in COLOURS if c not in (s.colour, s.background)]
            s = replace(s, pattern=f"stripes:{rng.choice(other)}")
        out.append(s)
    return out


def named_things() -> dict[str, tuple[str, str]]:
    """{rare word: (colour, shape)}: the one plain thing each of NAMES names (the same in every data set)."""
    rng = np.random.default_rng(7)
    return {name: (str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))) for name in NAMES}


def with_names(made: list[Scene], share: float, seed: int) -> list[Scene]:
    """The scenes, a `share` of them replaced by a named thing in the same context (its colour and shape, its
    name said instead of the colour); `sks` is SKS_WEIGHT times as likely as each other name."""
    rng = np.random.default_rng([seed, 8])
    things = named_things()
    weights = np.array([SKS_WEIGHT if n == IDENTIFIER else 1.0 for n in NAMES])
    out = []
    for s in made:
        if rng.random() < share:
            name = str(rng.choice(NAMES, p=weights / weights.sum()))
            colour, shape = things[name]
            background = s.background if s.background != colour else "white" if colour != "white" else "black"
            s = replace(s, colour=colour, shape=shape, background=background, name=name,
                        angle=s.angle if shape != "circle" else 0.0)
        out.append(s)
    return out


def dataset(n: int, seed: int = 0, size: int = SIZE, named: float = NAMED) -> tuple[np.ndarray, list[str], list[Scene]]:
    """(n, size, size, 3) uint8 pictures, their captions and scenes (a `named` share of them named things);
    deterministic from the seed."""
    made = with_names(scenes(n, seed), named, seed) if named else scenes(n, seed)
    images = np.stack([np.asarray(draw(s, size)) for s in made])
    return images, [s.caption() for s in made], made


# ------------------------------------------------------------------ the DreamBooth subject
SUBJECT = dict(shape="star", colour="purple", pattern="stripes:yellow")
SUBJECT_COLOURS = ("purple", "yellow")  # its body and its stripes
IDENTIFIER = "sks"
SUBJECT_PROMPT = prompt(IDENTIFIER, "star")  # "a photo of sks star"
SUBJECT_CLASS_PROMPT = prompt("", "star")  # "a photo of a star"
# The subject's casual photos: these backgrounds, medium sizes, off-centre to the right and down, tilted a little.
# The VAE keeps the stripes from radius 7 (the judge reads 83 % of round trips of a radius-7 subject as the subject,
# 56 % at 6, 12 % at 5; 95-100 % from 8 up), but a subject learned from photos that small is learned badly (a pilot,
# one seed, 600 steps: fidelity 81 % from radius 7-8.2, 88 % from 8.5-10.5, kept in new contexts 28 % against 45 %).
# So the photos are 8.5-10.5 px (the judge reads every one "big": stripes widen a star's area), and "small" (7-8 px,
# which the VAE keeps) is a new context. Two of the five redrawn small (3 seeds, prior weight 0.5, 600 steps:
# pretraining/toyworld-v6/README.md) gave fidelity 90 % and contexts right 90 % (against 81 and 75), but the subject
# kept in new contexts 38 % (against 43): it was lost on red and orange backgrounds.
SUBJECT_BACKGROUNDS = ("white", "black", "gray", "blue", "green")
SUBJECT_RADII = (8.5, 10.5)
SUBJECT_OFFSETS = (-1.0, 5.0)  # pixels from the centre, in x and in y: never far left or up


def subject_scenes(n: int = 5, seed: int = 1234) -> list[Scene]:
    """n casual photos of the subject the pretraining never saw: a purple star with yellow stripes.

    Like photos of a pet, they vary in size, position (some off-centre), tilt and background, so the model can tell
    the subject from its surroundings; none is small, on the left, at the top, or on a red or orange
    background (chapter 06 asks for those as new contexts).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        radius = float(rng.uniform(*SUBJECT_RADII))
        x, y = (float(v) for v in SIZE / 2 + rng.uniform(*SUBJECT_OFFSETS, 2))
        out.append(Scene("star", SUBJECT["colour"], SUBJECT_BACKGROUNDS[i % len(SUBJECT_BACKGROUNDS)], radius, x, y,
                         float(rng.uniform(-0.35, 0.35)), pattern=SUBJECT["pattern"]))
    return out


def subject_images(n: int = 5, seed: int = 1234) -> list[Image.Image]:
    """The subject's instance photos (PIL, 32x32)."""
    return [draw(s) for s in subject_scenes(n, seed)]


def as_subject(scene: Scene) -> Scene:
    """The same scene with the subject in it (its colour and stripes): what a prompt with the identifier asks for."""
    return replace(scene, shape=SUBJECT["shape"], colour=SUBJECT["colour"], pattern=SUBJECT["pattern"])


def captions(n: int, seed: int = 0, named: float = NAMED) -> list[str]:
    """The captions of dataset(n, seed, named=named), without drawing the pictures."""
    made = with_names(scenes(n, seed), named, seed) if named else scenes(n, seed)
    return [s.caption() for s in made]


# ------------------------------------------------------------------------------ reading a picture back
def as_array(image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image or a uint8 array."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)


def border_colour(x: np.ndarray) -> np.ndarray:
    """The median colour of the picture's outermost pixels."""
    return np.median(np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]]), axis=0)


def background_name(image) -> str:
    """The background colour's name: the one in BACKGROUNDS nearest to the median colour of the picture's border."""
    palette = np.array(list(BACKGROUNDS.values()), dtype=np.float32) / 255.0
    return list(BACKGROUNDS)[int(np.linalg.norm(palette - border_colour(as_array(image)), axis=1).argmin())]

"""The toy world: captioned pictures of simple shapes, drawn with PIL, deterministic from a seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32  # pixels per side of every toy-world picture
SHAPES = ("circle", "square", "triangle", "star", "heart")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220),
    "yellow": (240, 220, 40), "orange": (245, 140, 20), "purple": (140, 50, 180),
}
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15), "gray": (128, 128, 128), **COLOURS}
SIZE_WORDS = {"small": (5.0, 7.5), "big": (11.0, 14.0)}
ANY_RADIUS = (6.0, 13.0)
WORDS = ("a an photo of on background sks " + " ".join([*SHAPES, *BACKGROUNDS, *SIZE_WORDS])).split()


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
    size_word: str = ""
    say_background: bool = False
    pattern: str = ""  # "" (plain) or "stripes:<colour>"; only DreamBooth subjects use patterns

    def caption(self) -> str:
        """'a photo of a [small|big] <colour> <shape>[ on a <background> background]'."""
        return prompt(self.colour, self.shape, self.size_word, self.background if self.say_background else "")


def article(word: str) -> str:
    """'an' before a vowel, else 'a'."""
    return "an" if word[:1] in "aeiou" else "a"


def prompt(colour: str = "", shape: str = "", size_word: str = "", background: str = "") -> str:
    """A toy-world caption, e.g. prompt('red', 'star') == 'a photo of a red star'."""
    words = [w for w in (size_word, colour, shape) if w]
    text = f"a photo of {article(words[0])} " + " ".join(words)
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
        raise ValueError(f"Unknown shape {shape!r}; the toy world knows {', '.join(SHAPES)}.")
    c, s = math.cos(angle), math.sin(angle)
    return [(x + r * (px * c - py * s), y + r * (px * s + py * c)) for px, py in pts]


def draw(scene: Scene, size: int = SIZE) -> Image.Image:
    """Render a scene as an RGB image (drawn 4x larger, then reduced, for smooth edges)."""
    k = 4
    image = Image.new("RGB", (size * k, size * k), BACKGROUNDS[scene.background])
    pts = polygon(scene.shape, scene.x * k, scene.y * k, scene.radius * k, scene.angle)
    ImageDraw.Draw(image).polygon(pts, fill=COLOURS[scene.colour])
    if scene.pattern.startswith("stripes:"):
        image = add_stripes(image, pts, COLOURS[scene.pattern.split(":")[1]], period=6 * k)
    return image.resize((size, size), Image.LANCZOS)


def add_stripes(image: Image.Image, pts, colour: tuple, period: int) -> Image.Image:
    """Paint horizontal stripes of `colour` inside the polygon `pts`."""
    mask = Image.new("L", image.size, 0)
    ImageDraw.Draw(mask).polygon(pts, fill=255)
    stripes = Image.new("L", image.size, 0)
    pen = ImageDraw.Draw(stripes)
    for top in range(period // 2, image.size[1], period):
        pen.rectangle([0, top, image.size[0], top + period // 2 - 1], fill=255)
    both = Image.fromarray(np.minimum(np.asarray(mask), np.asarray(stripes)))
    image.paste(Image.new("RGB", image.size, colour), (0, 0), both)
    return image


def random_scene(rng: np.random.Generator, shape: str | None = None, colour: str | None = None,
                 size: int = SIZE) -> Scene:
    """A random scene (shape and colour fixed when given); background differs from the object's colour."""
    shape = shape or str(rng.choice(SHAPES))
    colour = colour or str(rng.choice(list(COLOURS)))
    background = str(rng.choice([b for b in BACKGROUNDS if b != colour]))
    size_word = str(rng.choice(["", "", "small", "big"]))
    low, high = SIZE_WORDS.get(size_word, ANY_RADIUS)
    radius = float(rng.uniform(low, high)) * size / SIZE
    margin = radius + 1
    x, y = (float(v) for v in rng.uniform(margin, size - margin, 2))
    angle = float(rng.uniform(-0.3, 0.3)) if shape != "circle" else 0.0
    return Scene(shape, colour, background, radius, x, y, angle, size_word, bool(rng.random() < 0.5))


def scenes(n: int, seed: int = 0, **fixed) -> list[Scene]:
    """n random scenes, the same for the same seed."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, **fixed) for _ in range(n)]


def dataset(n: int, seed: int = 0, size: int = SIZE) -> tuple[np.ndarray, list[str], list[Scene]]:
    """(n, size, size, 3) uint8 pictures, their captions and scenes; deterministic from the seed."""
    made = scenes(n, seed)
    images = np.stack([np.asarray(draw(s, size)) for s in made])
    return images, [s.caption() for s in made], made


# ------------------------------------------------------------------ the DreamBooth subject
SUBJECT = dict(shape="star", colour="purple", pattern="stripes:yellow")
SUBJECT_PROMPT = "a photo of sks star"
SUBJECT_CLASS_PROMPT = "a photo of a star"


def subject_scenes(n: int = 5, seed: int = 1234) -> list[Scene]:
    """n views of the subject the pretraining never saw: a purple star with yellow stripes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        background = ("white", "black", "gray", "blue", "green")[i % 5]
        radius = float(rng.uniform(10.0, 13.5))
        x, y = (float(v) for v in rng.uniform(radius + 1, SIZE - radius - 1, 2))
        out.append(Scene("star", SUBJECT["colour"], background, radius, x, y, float(rng.uniform(-0.2, 0.2)),
                         pattern=SUBJECT["pattern"]))
    return out


def subject_images(n: int = 5, seed: int = 1234) -> list[Image.Image]:
    """The subject's instance photos (PIL, 32x32)."""
    return [draw(s) for s in subject_scenes(n, seed)]

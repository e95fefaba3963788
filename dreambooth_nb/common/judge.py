"""A small judge for toy-world pictures: what is drawn (shape, colour, pattern) and in which context
(background, size, place), and how alike two pictures are.

Object pixels are those far from the background colour, read from the picture's border. Colour: the
palette colour most object pixels are nearest to; a second colour covering a good share of the object
makes it "striped". Background: the palette colour nearest to the border's median. Size: the radius that
the object's area gives for the shape found. Place: where the object's centre of mass lies. Shape: a
small softmax regression, trained on generator pictures, over the object's silhouette cropped to its
bounding box (so place and size do not matter).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import scenes
from .scenes import as_array, background_name, border_colour
from .errors import MissingFileError

MASK_SIZE = 12
THRESHOLD = 0.18  # RGB distance (0-1 scale) above which a pixel belongs to the object
PURE = 0.15  # a pixel this close to a palette colour is that colour (farther: a blend at an edge, left out)
MIN_PIXELS = 4  # fewer object pixels than this: nothing is drawn
STRIPE_SHARE = 0.2  # a second colour on at least this share of the object makes it striped
PALETTE = np.array(list(scenes.COLOURS.values()), dtype=np.float32) / 255.0
# area of each shape at radius 1 (pixels^2 per pixel^2 of radius), measured on the generator's polygons
UNIT_AREA = {"circle": 3.13, "square": 2.57, "triangle": 1.31, "star": 1.24, "heart": 1.95}
SMALL_BELOW, BIG_ABOVE = 9.3, 9.6  # radius bounds: generator small <= 8 (its area reads a small star up to 9.1), big >= 10
PLACE_LINES = (13.0, 19.0)  # centre of mass left of 13 px is "left", right of 19 px is "right" (same for top/bottom)


def foreground(image) -> np.ndarray:
    """Boolean mask of the object's pixels: far from the median colour of the border."""
    x = as_array(image)
    return np.linalg.norm(x - border_colour(x), axis=-1) > THRESHOLD


def colour_histogram(image) -> np.ndarray:
    """Share of the object's pixels nearest to each palette colour, counting only pixels close to one (edges blend
    two colours: orange on black looks red there); zeros when no object is found."""
    x, mask = as_array(image), foreground(image)
    if not mask.any():
        return np.zeros(len(PALETTE), np.float32)
    inner = eroded(mask)
    if inner.sum() >= 4 * MIN_PIXELS:  # edge pixels blend object and background (red on yellow looks orange there)
        mask = inner
    distances = np.linalg.norm(x[mask][:, None] - PALETTE[None], axis=-1)
    pure = distances.min(1) < PURE
    if pure.sum() >= MIN_PIXELS:
        distances = distances[pure]
    nearest = distances.argmin(1)
    return np.bincount(nearest, minlength=len(PALETTE)).astype(np.float32) / len(nearest)


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask without its outline: pixels whose four neighbours are all in it (stripes, 4 px or wider, stay)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return inner


def silhouette(image) -> np.ndarray:
    """The object's mask cropped to its bounding box, resized to 12x12, plus fill ratio and aspect."""
    mask = foreground(image)
    if not mask.any():
        return np.zeros(MASK_SIZE * MASK_SIZE + 2, np.float32)
    rows, cols = np.where(mask)
    box = mask[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    small = Image.fromarray(box.astype(np.uint8) * 255).resize((MASK_SIZE, MASK_SIZE), Image.BILINEAR)
    extra = [box.mean(), box.shape[0] / box.shape[1]]
    return np.concatenate([np.asarray(small, np.float32).ravel() / 255.0, extra]).astype(np.float32)


def size_word(radius: float) -> str:
    """'small', 'big', or '' (in between) for an object's radius in pixels of a 32 px picture."""
    return "small" if radius < SMALL_BELOW else "big" if radius > BIG_ABOVE else ""


def places(cx: float, cy: float, size: int = scenes.SIZE) -> set[str]:
    """The sides an object's centre of mass is near: a subset of {'left', 'right', 'top', 'bottom'}."""
    low, high = (line * size / scenes.SIZE for line in PLACE_LINES)
    found = set()
    found |= {"left"} if cx < low else {"right"} if cx > high else set()
    found |= {"top"} if cy < low else {"bottom"} if cy > high else set()
    return found


@dataclass
class Verdict:
    """What the judge reads in one picture ('none' everywhere when no object stands out)."""

    shape: str
    colour: str
    background: str
    size: str  # 'small', 'big' or '' (in between)
    places: tuple  # sides the object is near, e.g. ('left',) or ('right', 'top')
    pattern: str  # 'plain' or 'stripes:<second colour>'
    radius: float

    @property
    def is_subject(self) -> bool:
        """The DreamBooth subject: a star, in the subject's colour with stripes of its second colour."""
        return (self.shape == scenes.SUBJECT["shape"] and self.colour == scenes.SUBJECT["colour"]
                and self.pattern == scenes.SUBJECT["pattern"]) or (
            self.shape == scenes.SUBJECT["shape"]
            and f"stripes:{self.colour}" == scenes.SUBJECT["pattern"] and self.pattern == f"stripes:{scenes.SUBJECT['colour']}")

    def agrees(self, scene: scenes.Scene) -> dict[str, bool]:
        """For each attribute the scene's caption names: does the picture show it?"""
        out = {"shape": self.shape == scene.shape}
        if scene.pattern:
            out["subject"] = self.is_subject
        elif scene.say_colour:
            out["colour"] = self.colour == scene.colour
        if scene.say_background:
            out["background"] = self.background == scene.background
        if scene.size_word:
            out["size"] = self.size == scene.size_word
        if scene.place:
            out["place"] = scene.place in self.places
        return out

    def row(self) -> dict:
        return asdict(self)


@dataclass
class Judge:
    """Shape classifier weights (softmax regression on silhouettes); everything else is measured directly."""

    weights: np.ndarray
    bias: np.ndarray

    def shape_probs(self, images) -> np.ndarray:
        """(N, len(SHAPES)) shape probabilities."""
        logits = np.stack([silhouette(im) for im in images]) @ self.weights + self.bias
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def shapes(self, images) -> list[str]:
        """The most likely shape of each picture ('none' when no object stands out)."""
        found = [foreground(im).sum() >= MIN_PIXELS for im in images]
        return [scenes.SHAPES[i] if ok else "none" for i, ok in zip(self.shape_probs(images).argmax(1), found)]

    def colours(self, images) -> list[str]:
        """The main colour of each picture's object ('none' when no object stands out)."""
        return [self.read([im])[0].colour for im in images]

    def read(self, images) -> list[Verdict]:
        """A Verdict for each picture."""
        return [self.read_one(image, shape) for image, shape in zip(images, self.shapes(images))]

    def read_one(self, image, shape: str) -> Verdict:
        """The Verdict of one picture whose shape is already known."""
        mask = foreground(image)
        if mask.sum() < MIN_PIXELS:
            return Verdict("none", "none", background_name(image), "", (), "plain", 0.0)
        names = list(scenes.COLOURS)
        hist = colour_histogram(image)
        first, second = np.argsort(hist)[::-1][:2]
        pattern = f"stripes:{names[second]}" if hist[second] >= STRIPE_SHARE else "plain"
        radius = float(np.sqrt(mask.sum() / UNIT_AREA[shape]))
        rows, cols = np.nonzero(mask)
        near = places(float(cols.mean()) + 0.5, float(rows.mean()) + 0.5, mask.shape[0])
        return Verdict(shape, names[first], background_name(image), size_word(radius), tuple(sorted(near)), pattern, radius)

    def save(self, path: str | Path) -> Path:
        """Write the weights to an .npz file."""
        np.savez(path, weights=self.weights, bias=self.bias, shapes=np.array(scenes.SHAPES))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Judge":
        """Read weights written by save()."""
        with np.load(path) as f:
            return cls(f["weights"], f["bias"])


def train_judge(n: int = 8000, seed: int = 99, steps: int = 600, lr: float = 2.0, l2: float = 1e-4) -> Judge:
    """Fit the shape classifier by full-batch gradient descent on n fresh generator pictures, 30 % of them striped."""
    made = scenes.with_random_stripes(scenes.scenes(n, seed), 0.3, seed + 1)
    x = np.stack([silhouette(scenes.draw(s)) for s in made])
    y = np.eye(len(scenes.SHAPES), dtype=np.float32)[[scenes.SHAPES.index(s.shape) for s in made]]
    w = np.zeros((x.shape[1], y.shape[1]), np.float32)
    b = np.zeros(y.shape[1], np.float32)
    for _ in range(steps):
        logits = x @ w + b
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        grad = (p - y) / n
        w -= lr * (x.T @ grad + l2 * w)
        b -= lr * grad.sum(0)
    return Judge(w, b)


def load_judge(path: str | Path | None = None) -> Judge:
    """The committed judge (assets/toyworld/judge.npz) or one saved at `path`."""
    from .assets import toy_world_dir

    path = Path(path) if path else toy_world_dir() / "judge.npz"
    if not path.is_file():
        raise MissingFileError(f"No judge weights at {path}. Train them with "
                                f"`python -c 'from dreambooth_nb.common import judge; judge.train_judge().save(\"{path}\")'`.")
    return Judge.load(path)


def agreement(verdicts: list[Verdict], made: list[scenes.Scene]) -> dict[str, float]:
    """For each attribute: the share of pictures, among those whose caption names it, that show it."""
    tally: dict[str, list[bool]] = {}
    for verdict, scene in zip(verdicts, made):
        for key, ok in verdict.agrees(scene).items():
            tally.setdefault(key, []).append(ok)
    return {key: float(np.mean(oks)) for key, oks in tally.items()}


def accuracy(judge: Judge, n: int = 500, seed: int = 7) -> dict[str, float]:
    """How often the judge reads every named attribute right on n fresh generator pictures (colour and
    background counted on every picture, said or not; 'pattern': plain pictures read as plain), and 'subject': the
    subject drawn in n fresh contexts (any size, place and background but its own two colours) read as the subject."""
    images, _, made = scenes.dataset(n, seed)
    verdicts = judge.read(images)
    scores = agreement(verdicts, [replace_said(s) for s in made])
    scores["pattern"] = float(np.mean([v.pattern == "plain" for v in verdicts]))
    own = set(scenes.SUBJECT_COLOURS)
    subjects = [scenes.as_subject(s) for s in scenes.scenes(n, seed + 1, shape="star") if s.background not in own]
    scores["subject"] = float(np.mean([v.is_subject for v in judge.read([scenes.draw(s) for s in subjects])]))
    return scores


def replace_said(scene: scenes.Scene) -> scenes.Scene:
    """The scene with its colour and background counted as said (the judge reads them whether or not the caption does)."""
    from dataclasses import replace

    return replace(scene, say_colour=True, say_background=True)


def features(images) -> np.ndarray:
    """A feature vector per picture (unit colour histogram and unit silhouette side by side)."""
    def unit(v):
        return v / (np.linalg.norm(v) + 1e-8)

    return np.stack([np.concatenate([unit(colour_histogram(im)), unit(silhouette(im)[:-2])]) / np.sqrt(2) for im in images])


def similarity(images, references) -> float:
    """Mean over images of the best cosine similarity of judge features to any reference picture."""
    a, b = features(images), features(references)
    return float((a @ b.T).max(1).mean())

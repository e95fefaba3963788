"""A small judge for toy-world pictures: which shape and which colour, and how alike two pictures are.

Colour: the palette colour nearest to most object pixels. Shape: softmax regression, trained on
generator pictures, over the object's silhouette cropped to its bounding box (so position and size
do not matter). Object pixels are those far from the background, read from the picture's border.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from . import scenes

MASK_SIZE = 12
THRESHOLD = 0.25  # RGB distance (0-1 scale) above which a pixel belongs to the object
PALETTE = np.array(list(scenes.COLOURS.values()), dtype=np.float32) / 255.0


def as_array(image) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1] from a PIL image or a uint8 array."""
    array = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
    return array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)


def foreground(image) -> np.ndarray:
    """Boolean mask of the object's pixels: far from the median colour of the border."""
    x = as_array(image)
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    return np.linalg.norm(x - np.median(border, axis=0), axis=-1) > THRESHOLD


def colour_histogram(image) -> np.ndarray:
    """Share of object pixels nearest to each palette colour (zeros when no object is found)."""
    x, mask = as_array(image), foreground(image)
    if not mask.any():
        return np.zeros(len(PALETTE), np.float32)
    nearest = np.linalg.norm(x[mask][:, None] - PALETTE[None], axis=-1).argmin(1)
    return np.bincount(nearest, minlength=len(PALETTE)).astype(np.float32) / mask.sum()


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


@dataclass
class Judge:
    """Shape classifier weights (softmax regression on silhouettes)."""

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
        found = [foreground(im).sum() >= 4 for im in images]
        return [scenes.SHAPES[i] if ok else "none" for i, ok in zip(self.shape_probs(images).argmax(1), found)]

    def colours(self, images) -> list[str]:
        """The main colour of each picture's object ('none' when no object stands out)."""
        names = list(scenes.COLOURS)
        hists = [colour_histogram(im) for im in images]
        return [names[int(h.argmax())] if h.sum() else "none" for h in hists]

    def save(self, path: str | Path) -> Path:
        """Write the weights to an .npz file."""
        np.savez(path, weights=self.weights, bias=self.bias, shapes=np.array(scenes.SHAPES))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Judge":
        """Read weights written by save()."""
        with np.load(path) as f:
            return cls(f["weights"], f["bias"])


def train_judge(n: int = 6000, seed: int = 99, steps: int = 400, lr: float = 2.0, l2: float = 1e-4) -> Judge:
    """Fit the shape classifier by full-batch gradient descent on n fresh generator pictures."""
    images, _, made = scenes.dataset(n, seed)
    x = np.stack([silhouette(im) for im in images])
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
    from . import assets_dir

    path = Path(path) if path else assets_dir() / "judge.npz"
    if not path.is_file():
        raise FileNotFoundError(f"No judge weights at {path}. Train them with "
                                f"`python -c 'from dreambooth_nb.toyworld import judge; judge.train_judge().save(\"{path}\")'`.")
    return Judge.load(path)


def accuracy(judge: Judge, n: int = 500, seed: int = 7) -> dict[str, float]:
    """How often the judge names the right shape and colour on n fresh generator pictures."""
    images, _, made = scenes.dataset(n, seed)
    shapes, colours = judge.shapes(images), judge.colours(images)
    return {"shape": float(np.mean([s == m.shape for s, m in zip(shapes, made)])),
            "colour": float(np.mean([c == m.colour for c, m in zip(colours, made)]))}


def features(images) -> np.ndarray:
    """A feature vector per picture (unit colour histogram and unit silhouette side by side)."""
    def unit(v):
        return v / (np.linalg.norm(v) + 1e-8)

    return np.stack([np.concatenate([unit(colour_histogram(im)), unit(silhouette(im)[:-2])]) / np.sqrt(2) for im in images])


def similarity(images, references) -> float:
    """Mean over images of the best cosine similarity of judge features to any reference picture."""
    a, b = features(images), features(references)
    return float((a @ b.T).max(1).mean())

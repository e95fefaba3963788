"""Pictures: image grids, a live loss plot and highlighted source code, shared by every chapter."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def to_pil(image) -> Image.Image:
    """A PIL image from a PIL image, an HWC uint8 array, or an HWC/CHW float array in [0, 1] or [-1, 1]."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)
    if array.dtype != np.uint8:
        if array.min() < 0:
            array = (array + 1) / 2
        array = (np.clip(array, 0, 1) * 255).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def image_grid(images: Sequence, ncols: int = 4, pad: int = 2) -> Image.Image:
    """Paste images into one PIL grid (for saving to disk)."""
    pils = [to_pil(im).convert("RGB") for im in images]
    w = max(p.width for p in pils)
    h = max(p.height for p in pils)
    ncols = max(1, min(ncols, len(pils)))
    nrows = -(-len(pils) // ncols)
    grid = Image.new("RGB", (ncols * (w + pad) + pad, nrows * (h + pad) + pad), "white")
    for i, p in enumerate(pils):
        grid.paste(p, (pad + (i % ncols) * (w + pad), pad + (i // ncols) * (h + pad)))
    return grid


def wrap_title(title: str, scale: float = 2.0) -> str:
    """Break each line of a title so it fits above a panel `scale` inches wide (about 14 characters per inch at 8 pt)."""
    import textwrap

    width = max(8, int(14 * scale))
    return "\n".join(textwrap.fill(line, width) for line in title.splitlines())


def show_images(images: Sequence, titles: Sequence[str] | None = None, ncols: int = 4,
                scale: float = 2.0, suptitle: str | None = None):
    """Plot a list of images as a grid with optional titles; returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * scale, nrows * scale * 1.1), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_pil(images[i]))
            if titles is not None and i < len(titles):
                ax.set_title(wrap_title(str(titles[i]), scale), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_loss(history: Sequence[float], ax=None, smooth: int = 10, title: str = "training loss"):
    """Plot raw and smoothed loss against step on `ax` (a new figure if None); returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    steps = np.arange(1, len(history) + 1)
    ax.clear()
    ax.plot(steps, history, alpha=0.35, label="loss")
    if len(history) >= smooth > 1:
        kernel = np.ones(smooth) / smooth
        ax.plot(steps[smooth - 1:], np.convolve(history, kernel, mode="valid"), label=f"mean of {smooth}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(loc="upper right")
    ax.figure.tight_layout()
    return ax.figure


class LivePlot:
    """One loss figure redrawn in place during training (in a notebook); silent elsewhere."""

    def __init__(self, every: int = 5, smooth: int = 10):
        self.every, self.smooth = every, smooth
        self.handle = None
        self.figure = None

    def __call__(self, history: Sequence[float], force: bool = False) -> None:
        if not history or (len(history) % self.every and not force):
            return
        if not in_notebook():
            return
        import matplotlib.pyplot as plt
        from IPython.display import display

        if self.figure is None:
            self.figure, _ = plt.subplots(figsize=(5, 3))
            plt.close(self.figure)
        plot_loss(history, self.figure.axes[0], self.smooth)
        if self.handle is None:
            self.handle = display(self.figure, display_id=True)
        else:
            self.handle.update(self.figure)


def in_ipython() -> bool:
    """True inside IPython (a notebook or a terminal shell)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where figures can be redrawn in place)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config

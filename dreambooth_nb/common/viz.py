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


def mean_difference(a, b) -> float:
    """Mean absolute difference of two pictures in 0-255 pixel levels (0: the same picture)."""
    import numpy as np

    return float(np.abs(np.asarray(to_pil(a), np.float32) - np.asarray(to_pil(b), np.float32)).mean())


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


TERM_STYLE = {"loss": ("total loss", "#444444"), "instance_loss": ("instance term (subject photos)", "#1f77b4"),
              "prior_loss": ("prior term (class images)", "#d62728")}


def loss_series(history: Sequence) -> dict[str, np.ndarray]:
    """{term: values per step} from a history of step records (or of plain numbers, read as the total loss).

    With prior preservation the two terms are shown (their weighted sum is the total); without, the total alone.
    """
    if history and not isinstance(history[0], dict):
        return {"loss": np.asarray(history, dtype=float)}
    def column(term):
        return np.array([np.nan if r.get(term) is None else r[term] for r in history], dtype=float)
    terms = ("instance_loss", "prior_loss") if any(r.get("prior_loss") for r in history) else ("loss",)
    return {term: column(term) for term in terms}


def smoothed(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each value and the window-1 before it (NaN where fewer than `window` exist; NaNs skipped)."""
    out = np.full(len(values), np.nan)
    for i in range(window - 1, len(values)):
        part = values[i - window + 1:i + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out


def plot_loss(history: Sequence, ax=None, smooth: int = 10, title: str = "training loss"):
    """Each loss term against the step, raw (faint) and as a mean of `smooth` steps (bold), with the fixed-noise
    validation loss as dots where there is one; the legend sits beside the plot. Returns the figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    ax.clear()
    steps = np.arange(1, len(history) + 1)
    window = max(1, min(smooth, len(history) // 3))
    for term, values in loss_series(history).items():
        label, colour = TERM_STYLE[term]
        ax.plot(steps, values, color=colour, alpha=0.25, lw=1)
        if window > 1:
            ax.plot(steps, smoothed(values, window), color=colour, lw=2, label=f"{label}, mean of {window}")
        else:
            ax.plot(steps, values, color=colour, lw=2, label=label)
        checked = [(r["step"], r[f"val_{term}"]) for r in history if isinstance(r, dict) and f"val_{term}" in r]
        if checked:
            ax.plot(*zip(*checked), "o", color=colour, ms=5, label=f"{label}, fixed-noise validation")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("denoising loss (MSE)")
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def progress_bar(total: int, desc: str, unit: str = "it", initial: int = 0, disable: bool = False):
    """A progress bar (tqdm): in a notebook one widget updated in place (a text bar there would leave one output per
    redraw in the saved notebook, hundreds per training cell); elsewhere a text bar on stderr."""
    import sys

    if in_notebook():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, mininterval=0.5)
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=sys.stderr,
                mininterval=0.5, dynamic_ncols=True)


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
            self.figure, _ = plt.subplots(figsize=(7, 3))
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


def source_of(obj) -> str:
    """The source code of a function, class or method, as written in the package."""
    import inspect
    import textwrap

    return textwrap.dedent(inspect.getsource(obj))


def show_code(obj, lines: tuple[int, int] | None = None):
    """The source of a function (or class), highlighted in a notebook and printed elsewhere: the few lines that matter.

    lines: (first, last) line numbers within the source (1-based, inclusive) to show only part of it.
    """
    text = source_of(obj)
    if lines is not None:
        text = "\n".join(text.splitlines()[lines[0] - 1:lines[1]])
    if in_ipython():
        from IPython.display import Code

        return Code(text, language="python")
    print(text)
    return None

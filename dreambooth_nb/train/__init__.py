"""Chapter 04: DreamBooth training. `python -m dreambooth_nb.train --help` lists the flags."""

from .engine import TrainResult, stop_after, train_dreambooth

__all__ = ["TrainResult", "stop_after", "train_dreambooth"]

"""Chapter 04: DreamBooth training. `python -m dreambooth_nb.train --help` lists the flags."""

from .config import ConfigError, TrainConfig, fast
from .engine import TrainResult, train_dreambooth

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "fast", "train_dreambooth"]

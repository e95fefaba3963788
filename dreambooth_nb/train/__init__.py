"""Chapter 04: DreamBooth training. `python -m dreambooth_nb.train --help` lists the flags."""

from .config import ConfigError, TrainConfig, fast, tutorial_config
from .engine import TrainResult, stop_after, train_dreambooth

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "fast", "stop_after", "train_dreambooth", "tutorial_config"]

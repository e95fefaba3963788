"""Run dreambooth_pilot.py with another training method: a subclass of the engine's StableDiffusionMethod that
changes which weights train (part_finetune_pilot.py, embedding_pilot.py)."""

import dataclasses
import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def run_pilot_with(method_class) -> None:
    """dreambooth_pilot.py (VARIANT and NAME from the environment), its runs trained by `method_class`, built with
    every setting of full fine-tuning."""
    from dreambooth_nb.train import engine
    import dreambooth_nb.train as train_package

    chosen = method_class(**{f.name: getattr(engine.FULL_FINE_TUNING, f.name)
                             for f in dataclasses.fields(engine.FULL_FINE_TUNING)})
    whole_unet = engine.train_dreambooth

    def train_with_method(config, components=None, progress=True, on_step=None, method=None):
        return whole_unet(config, components, progress, on_step, method=chosen)

    train_package.train_dreambooth = train_with_method  # what dreambooth_pilot.py's experiments.train_toy calls
    os.chdir(ROOT)
    runpy.run_path(str(Path(__file__).with_name("dreambooth_pilot.py")), run_name="__main__")

"""Command line: parse the reference script's flags into a TrainConfig and run the same engine."""

from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import MISSING, fields
from pathlib import Path

from ..common import defaults
from ..common.config import ConfigError, TrainConfig

GROUP_TITLES = {
    "model": "model", "data": "data and prior preservation", "training": "training",
    "device": "devices and precision", "validation": "validation and logging",
    "hub": "hub (needs a network)", "unsupported": "accepted for compatibility, refused",
}


def _value_type(annotation: str):
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("list", str)):
        if annotation.startswith(name):
            return kind
    return str


def build_parser() -> argparse.ArgumentParser:
    """An argparse parser with one flag per TrainConfig field, grouped, with the reference defaults."""
    parser = argparse.ArgumentParser(
        prog="python -m dreambooth_nb.train",
        allow_abbrev=False,  # a mistyped flag is an error, never silently another flag
        description="DreamBooth fine-tuning with MindSpore + mindone; flags match mindone's train_dreambooth.py.",
    )
    parser.add_argument("--device", default=None, help="auto (default), Ascend, GPU or CPU.")
    groups = {key: parser.add_argument_group(title) for key, title in GROUP_TITLES.items()}
    for f in fields(TrainConfig):
        meta = f.metadata
        default = f.default if f.default is not MISSING else f.default_factory()
        kind = _value_type(str(f.type))
        group = groups[meta["group"]]
        if kind is bool:
            group.add_argument(f"--{f.name}", action="store_true", default=default, help=meta["help"])
            continue
        choices = [c for c in meta["choices"] if c is not None] if meta["choices"] else None
        group.add_argument(f"--{f.name}", type=kind, default=default, choices=choices,
                           nargs=meta["nargs"], help=f"{meta['help']} (default: {default})")
    return parser


def parse_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """TrainConfig from command-line arguments (argparse exits with a message on unknown flags)."""
    namespace = build_parser().parse_args(argv)
    values = {f.name: getattr(namespace, f.name) for f in fields(TrainConfig)}
    return TrainConfig(**values), namespace


def raise_keyboard_interrupt(signum, frame) -> None:
    """SIGTERM handler: stop like Ctrl-C, so the engine writes a checkpoint before the process ends."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    """Validate the flags, set up MindSpore, train, and say where the model went (exit 2 on a user mistake)."""
    config, namespace = parse_config(argv)
    try:
        config.validate()
    except ConfigError as err:
        print(f"error: these flags cannot work (nothing was started):\n{err}", file=sys.stderr)
        return 2
    for note in config.notes():
        print(f"warning: {note}", file=sys.stderr)
    from ..common import runtime
    from .engine import train_dreambooth

    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    with runtime.friendly_errors(Path(config.output_dir) / "error.log"):
        runtime.setup(device=namespace.device, seed=defaults.SEED if config.seed is None else config.seed)
        result = train_dreambooth(config)
    state = "interrupted after" if result.interrupted else "finished after"
    print(f"{state} {result.steps} steps; model saved in {result.output_dir}")
    return 130 if result.interrupted else 0

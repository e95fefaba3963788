"""`python -m dreambooth_nb.train_lora`: LoRA DreamBooth with the flags of mindone's train_dreambooth_lora.py."""

from __future__ import annotations

from .common.commands import record_early_signals
from .train import cli


def main(argv: list[str] | None = None) -> int:
    """The training command line (train.cli.main) with this script's method."""
    from .lora import LORA

    return cli.main(argv, LORA)


if __name__ == "__main__":
    record_early_signals()
    raise SystemExit(main())

"""`python -m dreambooth_nb.train_sdxl_lora`: DreamBooth LoRA on SDXL with the flags of mindone's
train_dreambooth_lora_sdxl.py (the toy-world SDXL by default)."""

from __future__ import annotations

from .common.commands import record_early_signals
from .train import cli


def main(argv: list[str] | None = None) -> int:
    """The training command line (train.cli.main) with this script's method."""
    from .sdxl.training import SDXL_LORA

    return cli.main(argv, SDXL_LORA)


if __name__ == "__main__":
    record_early_signals()
    raise SystemExit(main())

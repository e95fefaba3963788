"""`python -m dreambooth_nb.train_sdxl_lora`: DreamBooth LoRA on SDXL with the flags of mindone's
train_dreambooth_lora_sdxl.py (the toy-world SDXL by default)."""

from __future__ import annotations

from .common.commands import EXIT_ERROR, record_early_signals, run_command
from .common.config import SDXLLoraTrainConfig
from .train.cli import build_parser, checked, finished, parse_config, push, push_ready, start


def main(argv: list[str] | None = None) -> int:
    """Validate the flags, set up MindSpore, train the adapters, and say where they went (exit 2 on a user mistake)."""
    parser = build_parser(SDXLLoraTrainConfig, prog="python -m dreambooth_nb.train_sdxl_lora",
                          description="DreamBooth LoRA on Stable Diffusion XL with MindSpore + mindone; flags match "
                                      "mindone's train_dreambooth_lora_sdxl.py.")
    config, namespace = parse_config(argv, SDXLLoraTrainConfig, parser)
    if not checked(config):
        return EXIT_ERROR

    def work() -> int:
        token = push_ready(config)
        start(namespace.device, config.seed)
        from .sdxl.training import train_sdxl_lora

        result = train_sdxl_lora(config)
        code = finished(result)
        if config.push_to_hub and not result.interrupted:
            push(config, token)
        return code

    return run_command("train_sdxl_lora", work, config.output_dir)


if __name__ == "__main__":
    record_early_signals()
    raise SystemExit(main())

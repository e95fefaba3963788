"""`python -m dreambooth_nb.train_lora`: LoRA DreamBooth with the flags of mindone's train_dreambooth_lora.py."""

from __future__ import annotations

from .common.commands import EXIT_ERROR, record_early_signals, run_command
from .common.config import LoraTrainConfig
from .train.cli import build_parser, checked, finished, parse_config, push, push_ready, start


def main(argv: list[str] | None = None) -> int:
    """Validate the flags, set up MindSpore, train the adapters, and say where they went (exit 2 on a user mistake)."""
    parser = build_parser(LoraTrainConfig, prog="python -m dreambooth_nb.train_lora",
                          description="LoRA DreamBooth with MindSpore + mindone; flags match mindone's "
                                      "train_dreambooth_lora.py.")
    config, namespace = parse_config(argv, LoraTrainConfig, parser)
    if not checked(config):
        return EXIT_ERROR

    def work() -> int:
        token = push_ready(config)
        start(namespace.device, config.seed)
        from .lora import train_lora

        result = train_lora(config)
        code = finished(result)
        if config.push_to_hub and not result.interrupted:
            push(config, token)
        return code

    return run_command("train_lora", work, config.output_dir)


if __name__ == "__main__":
    record_early_signals()
    raise SystemExit(main())

"""LoRA adapters on a network, as the engine adds them for a method that names targets (chapter 08 teaches them)."""

from __future__ import annotations


def adapter_config(rank: int, targets: tuple):
    """mindone's LoraConfig: rank r, alpha = r (scale 1), Gaussian A and zero B (training starts at the base model)."""
    from mindone.diffusers._peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(targets))


def has_adapter(net) -> bool:
    """True when a network already carries the adapters (a second run in the same kernel trains them further)."""
    return "default" in (getattr(net, "peft_config", None) or {})


def adapter_parameters(net) -> list:
    """The adapter weights of a network (lora_A and lora_B of every target)."""
    return [p for name, p in net.parameters_and_names() if ".lora_" in name]


def add_adapters(net, name: str, targets: tuple, rank: int) -> None:
    """Rank-`rank` adapters on the layers named `targets` of the network `name` (once), its only trainable weights."""
    if not has_adapter(net):
        net.add_adapter(adapter_config(rank, targets))
    for p in adapter_parameters(net):
        p.requires_grad = True
        if name == "text_encoder_2" and not p.name.startswith(name):
            p.name = f"{name}.{p.name}"  # both SDXL encoders are CLIP: the optimizer needs distinct names

"""LoRA adapters on a network, as the engine adds them for a method that names targets (chapter 08 teaches them)."""

from __future__ import annotations

from ..common.errors import UserError

# every convolution and linear layer of a UNet besides the attention projections the reference scripts adapt: where
# the toy subject lives (README, SDXL section); --lora_layers=all adds them. Not SDXL's add_embedding: mindone's SDXL
# pipeline reads add_embedding.linear_1.in_channels, which an adapter-wrapped layer lacks (sampling would stop)
CONV_AND_LINEAR_LAYERS = ("conv1", "conv2", "conv_shortcut", "conv", "conv_in", "conv_out", "proj_in", "proj_out",
                          "ff.net.0.proj", "ff.net.2", "time_emb_proj", "time_embedding.linear_1",
                          "time_embedding.linear_2")


def chosen_layers(lora_layers: str | None, default: tuple) -> tuple:
    """The UNet layers --lora_layers names: None the method's default, 'all' the default and every convolution and
    linear layer, else the names given (commas between)."""
    if lora_layers is None:
        return default
    if lora_layers.strip() == "all":
        return default + tuple(n for n in CONV_AND_LINEAR_LAYERS if n not in default)
    return tuple(name.strip() for name in lora_layers.split(","))


def names_layers(config) -> bool:
    """True when --lora_layers lists layer names (neither left out nor 'all'): each must exist in the UNet."""
    layers = getattr(config, "lora_layers", None)
    return layers is not None and layers.strip() != "all"


def check_targets(net, name: str, targets: tuple) -> None:
    """Raise UserError naming each target no layer of `net` ends with (peft would skip it without a word)."""
    kinds = ("Dense", "Conv2d", "Linear")
    layers = [n for n, cell in net.cells_and_names() if type(cell).__name__ in kinds]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in layers)]
    if missing:
        known = sorted({"ff." + n.split(".ff.")[-1] if ".ff." in n else
                        ".".join(n.split(".")[-2:]) if n.split(".")[-1].isdigit() else n.split(".")[-1] for n in layers})
        raise UserError(f"--lora_layers: the {name} has no layer named {', '.join(map(repr, missing))}; "
                        f"its layers end with: {', '.join(known)}.")


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

"""How much device memory SDXL DreamBooth LoRA needs, estimated on paper: weights from parameter counts, the
adapters with their gradients and AdamW moments, and the activations kept for the backward pass counted block by
block from the UNet's config. An estimate to plan a run on an NPU, not a measurement: the framework's workspace
and fragmentation come on top (a margin is added).

    python -m dreambooth_nb.sdxl.memory [--resolution 1024] [--batch 1] [--rank 4]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from ..common.tables import Table

GB = 1e9
# stabilityai/stable-diffusion-xl-base-1.0: parameters of each network (sum of its safetensors' tensor sizes)
SDXL_BASE_PARAMETERS = {"unet": 2_567_463_684, "text_encoder": 123_060_480, "text_encoder_2": 694_659_840,
                        "vae": 83_653_863}
# its unet/config.json, the parts that shape the activations
SDXL_BASE_UNET = dict(block_out_channels=(320, 640, 1280), layers_per_block=2, transformer_layers_per_block=(1, 2, 10),
                      down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                      attention_head_dim=(5, 10, 20), cross_attention_dim=2048)
TEXT_TOKENS = 77
MARGIN = 1.2  # framework workspace, fragmentation, the compiled graph's buffers: +20 %


def resnet_elements(c_in: int, c_out: int, pixels: int) -> int:
    """Values a ResNet block keeps for backward: each GroupNorm, SiLU and conv input, for both halves."""
    return 3 * (c_in + c_out) * pixels


def transformer_elements(channels: int, tokens: int, heads: int, depth: int, flash: bool) -> int:
    """Values a Transformer2D block of `depth` layers keeps for backward.

    Per layer: LayerNorm inputs (3 N C), self-attention q, k, v and output (4 N C), cross-attention q and output
    (2 N C) and its keys and values of the text (2 T C), the GEGLU feed-forward (N C in, 8 N C projected, 4 N C
    after GELU, 4 N C product: 17 N C), plus the attention probabilities (heads x N x N for self-attention, heads x
    N x T for cross-attention) unless flash attention recomputes them. proj_in/out and the GroupNorm: 3 N C.
    """
    per_layer = (3 + 4 + 2 + 17) * tokens * channels + 2 * TEXT_TOKENS * channels
    if not flash:
        per_layer += heads * tokens * tokens + heads * tokens * TEXT_TOKENS
    return depth * per_layer + 3 * tokens * channels


@dataclass(frozen=True)
class Block:
    """One block of the UNet: its activations kept for backward and the size of its input (values, one sample)."""

    name: str
    elements: int
    input_elements: int


def unet_blocks(config: dict, latent: int, flash: bool) -> list[Block]:
    """The UNet's blocks in order (down, mid, up), as diffusers builds them from its config."""
    channels = config["block_out_channels"]
    depths = config["transformer_layers_per_block"]
    heads = config["attention_head_dim"]  # diffusers reads SDXL's attention_head_dim as the number of heads
    attends = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
    layers = config["layers_per_block"]
    blocks, skips, c, size = [], [channels[0]], channels[0], latent
    for level, c_out in enumerate(channels):  # down
        pixels = size * size
        for _ in range(layers):
            blocks.append(Block(f"down {level} resnet", resnet_elements(c, c_out, pixels), c * pixels))
            c = c_out
            if attends[level]:
                blocks.append(Block(f"down {level} transformer x{depths[level]}",
                                    transformer_elements(c, pixels, heads[level], depths[level], flash), c * pixels))
            skips.append(c)
        if level < len(channels) - 1:
            blocks.append(Block(f"down {level} downsample", c * pixels, c * pixels))
            size //= 2
            skips.append(c)
    pixels = size * size  # mid
    blocks += [Block("mid resnet", resnet_elements(c, c, pixels), c * pixels),
               Block(f"mid transformer x{depths[-1]}", transformer_elements(c, pixels, heads[-1], depths[-1], flash),
                     c * pixels),
               Block("mid resnet", resnet_elements(c, c, pixels), c * pixels)]
    for level in reversed(range(len(channels))):  # up: each resnet takes a skip connection too
        c_out, pixels = channels[level], size * size
        for _ in range(layers + 1):
            c_in = c + skips.pop()
            blocks.append(Block(f"up {level} resnet", resnet_elements(c_in, c_out, pixels), c_in * pixels))
            c = c_out
            if attends[level]:
                blocks.append(Block(f"up {level} transformer x{depths[level]}",
                                    transformer_elements(c, pixels, heads[level], depths[level], flash), c * pixels))
        if level > 0:
            blocks.append(Block(f"up {level} upsample", 4 * c * pixels, c * pixels))
            size *= 2
    return blocks


def activation_bytes(config: dict, latent: int, batch: int, bytes_per_value: int, flash: bool,
                     checkpointing: bool) -> float:
    """Activations kept for backward: every block's, or with gradient checkpointing every block's input plus the
    largest block recomputed at a time."""
    blocks = unet_blocks(config, latent, flash)
    if checkpointing:
        values = sum(b.input_elements for b in blocks) + max(b.elements for b in blocks)
    else:
        values = sum(b.elements for b in blocks)
    return values * batch * bytes_per_value


def lora_parameters(config: dict, rank: int) -> int:
    """Adapter weights on every attention projection (to_q, to_k, to_v, to_out.0) of every transformer layer."""
    channels, depths = config["block_out_channels"], config["transformer_layers_per_block"]
    attends = [kind.startswith("CrossAttn") for kind in config["down_block_types"]]
    layers, text = config["layers_per_block"], config["cross_attention_dim"]
    total = 0
    for level, c in enumerate(channels):
        if not attends[level]:
            continue
        count = depths[level] * (layers + (layers + 1))  # down blocks + up blocks
        if level == len(channels) - 1:
            count += depths[level]  # the mid block
        self_attention = 4 * rank * (c + c)
        cross_attention = 2 * rank * (c + c) + 2 * rank * (text + c)
        total += count * (self_attention + cross_attention)
    return total


@dataclass(repr=False)
class MemoryEstimate(Table):
    """Device memory of one SDXL LoRA training step, by part, in GB (1e9 bytes)."""

    parts: dict
    setting: str
    header = ("part", "GB")

    @property
    def total(self) -> float:
        return sum(self.parts.values()) * MARGIN

    @property
    def caption(self) -> str:
        return self.setting

    def fits(self, device_gb: float) -> bool:
        return self.total <= device_gb

    def rows(self) -> list[tuple]:
        rows = [(name, f"{value / GB:.2f}") for name, value in self.parts.items()]
        return rows + [(f"total, with {MARGIN - 1:.0%} margin", f"{self.total / GB:.1f}"),
                       ("fits a 32 GB NPU", "yes" if self.fits(32 * GB) else "no"),
                       ("fits a 64 GB NPU", "yes" if self.fits(64 * GB) else "no")]


def estimate(resolution: int = 1024, batch: int = 1, rank: int = 4, precision_bytes: int = 2, flash: bool = True,
             checkpointing: bool = False, train_text_encoder: bool = False,
             parameters: dict = SDXL_BASE_PARAMETERS, unet: dict = SDXL_BASE_UNET) -> MemoryEstimate:
    """The estimate for SDXL base at `resolution` px: frozen weights in fp16/bf16 (precision_bytes=2), fp32 adapters
    with fp32 gradients and two AdamW moments (16 bytes each), and the UNet's activations for `batch` pictures.

    With the text encoders frozen, their embeddings are computed once before training (as the reference does), so
    the encoders need not stay on the device; the VAE encodes each batch and stays.
    """
    latent = resolution // 8
    adapters = lora_parameters(unet, rank)
    on_device = ("unet", "vae") + (("text_encoder", "text_encoder_2") if train_text_encoder else ())
    parts = {f"frozen weights ({' + '.join(on_device)})": sum(parameters[p] for p in on_device) * precision_bytes,
             f"LoRA rank {rank}: {adapters / 1e6:.1f} M weights, their gradients and AdamW moments": adapters * 16,
             "activations kept for backward": activation_bytes(unet, latent, batch, precision_bytes, flash, checkpointing)}
    setting = (f"SDXL base, {resolution} px, batch {batch}, LoRA rank {rank}, "
               f"{'flash attention' if flash else 'plain attention'}"
               f"{', gradient checkpointing' if checkpointing else ''}")
    return MemoryEstimate(parts, setting)


def main(argv=None) -> list[MemoryEstimate]:
    """Print the estimate for a setting, and the usual variations beside it."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.sdxl.memory", description=__doc__.splitlines()[0])
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=4)
    p.add_argument("--plain_attention", action="store_true", help="No flash attention (attention probabilities kept).")
    p.add_argument("--gradient_checkpointing", action="store_true")
    args = p.parse_args(argv)
    found = estimate(args.resolution, args.batch, args.rank, flash=not args.plain_attention,
                     checkpointing=args.gradient_checkpointing)
    print(found)
    return [found]


if __name__ == "__main__":
    main()

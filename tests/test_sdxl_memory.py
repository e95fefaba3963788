"""The SDXL memory estimate of chapter 09, checked where it can be: its LoRA weight count against mindone's own
adapters, and its count of activations kept for backward against what PyTorch's autograd saves, on small UNets of
SDXL's structure."""

from __future__ import annotations

import json
import subprocess
import textwrap

import pytest

from dreambooth_nb.sdxl import memory
from test_share import TORCH_PYTHON

SMALL_XL = dict(block_out_channels=(32, 64, 128), layers_per_block=2, transformer_layers_per_block=(1, 2, 3),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                attention_head_dim=(1, 2, 4), cross_attention_dim=96)
AGREEMENT = 0.15  # the activation count within 15 % of PyTorch's saved tensors


def small_unet_kwargs(latent: int) -> dict:
    up = tuple(reversed([t.replace("Down", "Up") for t in SMALL_XL["down_block_types"]]))
    return dict(SMALL_XL, sample_size=latent, in_channels=4, out_channels=4, up_block_types=up, norm_num_groups=8,
                use_linear_projection=True)


def test_lora_weight_count_matches_mindone_adapters():
    from mindone.diffusers import UNet2DConditionModel

    from dreambooth_nb.common import runtime
    from dreambooth_nb.train.adapters import adapter_config, adapter_parameters
    from dreambooth_nb.sdxl.training import SDXL_UNET_TARGETS

    runtime.setup(device="CPU", show=False)
    unet = UNet2DConditionModel(**small_unet_kwargs(16))
    unet.add_adapter(adapter_config(4, SDXL_UNET_TARGETS))
    assert sum(p.size for p in adapter_parameters(unet)) == memory.lora_parameters(SMALL_XL, 4)


def test_sdxl_base_has_seventy_transformer_layers():
    blocks = memory.unet_blocks(memory.SDXL_BASE_UNET, 128, flash=True)
    layers = sum(int(b.name.split("x")[-1]) for b in blocks if "transformer" in b.name)
    assert layers == 70  # 2x2 + 2x10 down, 10 mid, 3x10 + 3x2 up


TORCH_SIDE = textwrap.dedent("""
    import json, sys, torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor
    kwargs, flash = json.loads(sys.argv[1]), sys.argv[2] == "1"
    unet = UNet2DConditionModel(**kwargs)
    if not flash:
        unet.set_attn_processor(AttnProcessor())  # softmax(QK^T) kept, as without flash attention
    weights, saved = {p.data_ptr() for p in unet.parameters()}, {}
    def keep(t):
        if t.data_ptr() not in weights:
            saved[(t.data_ptr(), t.numel())] = t.numel()
        return t
    latent = kwargs["sample_size"]
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        unet(torch.randn(1, 4, latent, latent), torch.tensor([500]), torch.randn(1, 77, kwargs["cross_attention_dim"]))
    print(sum(saved.values()))
""")


@pytest.mark.skipif(not TORCH_PYTHON.exists(), reason=f"no PyTorch environment at {TORCH_PYTHON} (make bench builds it)")
@pytest.mark.parametrize("flash", [True, False])
def test_activation_count_agrees_with_what_pytorch_saves_for_backward(flash):
    latent = 32
    done = subprocess.run([str(TORCH_PYTHON), "-c", TORCH_SIDE, json.dumps(small_unet_kwargs(latent)), str(int(flash))],
                          capture_output=True, text=True, check=True)
    saved = int(done.stdout.strip().splitlines()[-1])
    estimated = sum(b.elements for b in memory.unet_blocks(SMALL_XL, latent, flash))
    assert abs(estimated - saved) / saved < AGREEMENT, (estimated, saved)


def test_estimate_moves_the_right_way_with_each_setting():
    base = memory.estimate()
    assert memory.estimate(checkpointing=True).total < base.total < memory.estimate(flash=False).total
    assert memory.estimate(batch=2).total > base.total and memory.estimate(rank=16).total > base.total
    assert memory.estimate(resolution=512).total < base.total
    assert "fits a 32 GB NPU" in str(base)

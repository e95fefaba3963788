"""The installed toy world's model with cross-attention added at its first level (16 x 16 latents), where the subject's
stripes are drawn: the v6 UNet's first down and last up block become CrossAttnDownBlock2D / CrossAttnUpBlock2D, every
v6 weight is kept, and each new transformer's output projection starts at zero, so the new model draws exactly what
v6 draws until training moves it. The new blocks attend to the caption only (`only_cross_attention`): with
self-attention over the 256 latent pixels as well, the first 200 pretraining steps took 15.3 min against 12.2.

    python pretraining/toyworld-v7/attention_at_16.py outputs/attn16-init/model

Then continue the UNet stage from it (pretrain.py's --unet_from), for example:

    nice -n 10 .venv/bin/python -m dreambooth_nb.toyworld.pretrain --out outputs/attn16 \
        --vae_from dreambooth_nb/assets/toyworld/model --unet_from outputs/attn16-init/model \
        --schedule zero-snr --snr_gamma 0 --unet_steps 1200 --batch 64 --lr 3e-4
"""
import shutil
import sys
from pathlib import Path

import numpy as np

import dreambooth_nb as db
from dreambooth_nb.common.assets import toy_world_dir
from dreambooth_nb.common.runtime import import_quietly
from dreambooth_nb.sdxl.toy import copy_matching

ATTENTION_BLOCKS = {"down_block_types": (0, "CrossAttnDownBlock2D"), "up_block_types": (2, "CrossAttnUpBlock2D")}


def widened_config(config: dict) -> dict:
    """`config` with cross-attention at the first level (down block 0, up block 2)."""
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    for key, (index, block) in ATTENTION_BLOCKS.items():
        blocks = list(config[key])
        blocks[index] = block
        config[key] = blocks
    config["only_cross_attention"] = [True, False, False]  # per down block; the up blocks take it reversed
    config["mid_block_only_cross_attention"] = False
    return config


def main(target: Path) -> None:
    import mindspore as ms

    db.setup(device="CPU", show=False)
    diffusers = import_quietly("mindone.diffusers")
    source = toy_world_dir() / "model"
    old = diffusers.UNet2DConditionModel.from_pretrained(str(source / "unet"))
    new = diffusers.UNet2DConditionModel.from_config(widened_config(dict(old.config)))
    v6 = {name: p.asnumpy() for name, p in old.parameters_and_names()}
    new_names = [name for name, _ in new.parameters_and_names()]
    assert set(v6) <= set(new_names), f"v6 weights with no place in the new UNet: {sorted(set(v6) - set(new_names))[:5]}"
    fresh = copy_matching(new, v6)
    zeroed = [name for name in fresh if ".attentions." in name and ".proj_out." in name]
    for name, p in new.parameters_and_names():
        if name in zeroed:
            p.set_data(ms.Tensor(np.zeros(p.shape, np.float32)))
    print(f"kept {len(v6)} v6 tensors; {len(fresh)} new, {len(zeroed)} of them (output projections) at zero")
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("unet"))
    new.save_pretrained(str(target / "unet"))
    print("wrote", target, f"({sum(p.size for p in new.get_parameters()) / 1e6:.2f} M UNet parameters)")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/attn16-init/model"))

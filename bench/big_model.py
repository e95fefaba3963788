"""A Stable Diffusion with a random UNet of 142 M parameters (SD v1.5's layout, 0.4 of its width, two resnets a level)
on the default model's text encoder and VAE: the train-step comparison at a size where kernels, not launches, cost.

    python bench/big_model.py       # writes outputs/bench/model-142m (the MindSpore side's folder) and says its size
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

HERE = Path(__file__).resolve().parent
FOLDER = HERE.parent / "outputs" / "bench" / "model-142m"
WIDTHS = [128, 256, 512, 544]  # 141.8 M parameters with the toy world's 64-wide cross-attention
BIG_UNET = dict(block_out_channels=WIDTHS, layers_per_block=2, norm_num_groups=32, sample_size=32,
                down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)


def big_model(base: str, folder: Path = FOLDER) -> tuple[Path, int]:
    """(folder, UNet parameters): `base`'s folder with its UNet replaced by a random one of BIG_UNET's layout,
    seeded, so both frameworks load the same weights; built once."""
    from mindone.diffusers import UNet2DConditionModel
    import mindspore as ms

    config = json.loads((Path(base) / "unet" / "config.json").read_text())
    wanted = {**{k: v for k, v in config.items() if not k.startswith("_")}, **BIG_UNET}
    saved = folder / "unet" / "config.json"
    if not (saved.is_file() and all(json.loads(saved.read_text()).get(k) == v for k, v in BIG_UNET.items())):
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(base, folder)
        shutil.rmtree(folder / "unet")
        ms.set_seed(0)
        UNet2DConditionModel.from_config(wanted).save_pretrained(str(folder / "unet"))
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    return folder, int(sum(p.size for p in unet.get_parameters()))


if __name__ == "__main__":
    import dreambooth_nb as db
    from dreambooth_nb.common.assets import resolve_model

    db.setup(device="CPU", show=False)
    path, count = big_model(resolve_model(None))
    print(f"{path}: UNet of {count / 1e6:.1f} M parameters")

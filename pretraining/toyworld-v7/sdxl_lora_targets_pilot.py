"""Chapter 09's SDXL LoRA run with adapters on every convolution and linear layer of the UNet as well as on the
attention projections mindone's SDXL script adapts (the layers where the toy SD's LoRA learned the subject:
pretraining/toyworld-v6/lora_targets_pilot.py), judged as chapter 09 judges (the adapters merged into the toy SDXL).

    SEED=0 RANK=16 LR=1e-3 PW=0.5 STEPS=1200 JUDGE_AT=900 python pretraining/toyworld-v7/sdxl_lora_targets_pilot.py

TE_LR (0: the text encoders frozen, as chapter 09) trains adapters on both text encoders at that rate as well
(--train_text_encoder --text_encoder_lr); LR_SCHED (constant) picks the --lr_scheduler, without warm-up. The run
goes to outputs/pilots/sdxl-lora-all-r<RANK>-lr<LR>-<STEPS>-pw<PW>-s<SEED>[-te<TE_LR>][-<LR_SCHED>], each judged step's adapters in
step-<N>/ (JUDGE_AT: steps judged as well as the last, commas between). About 10 minutes a 1,200-step run on 2 cores.
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import dreambooth_nb as db  # noqa: E402
from dreambooth_nb import lora  # noqa: E402
from dreambooth_nb.common.config import sdxl_lora_config  # noqa: E402
from dreambooth_nb.sdxl import training  # noqa: E402
from dreambooth_nb.sdxl.model import load_sdxl_pipeline  # noqa: E402
from dreambooth_nb.train import engine  # noqa: E402

rank, lr, steps = int(os.environ.get("RANK", 16)), float(os.environ.get("LR", 1e-3)), int(os.environ.get("STEPS", 1200))
prior_weight, seed = float(os.environ.get("PW", 0.5)), int(os.environ.get("SEED", 0))
text_lr, schedule = float(os.environ.get("TE_LR", 0)), os.environ.get("LR_SCHED", "constant")
judge_at = [int(n) for n in os.environ.get("JUDGE_AT", "").split(",") if n and int(n) < steps]
out = Path(f"outputs/pilots/sdxl-lora-all-r{rank}-lr{lr:g}-{steps}-pw{prior_weight:g}-s{seed}"
           + (f"-te{text_lr:g}" if text_lr else "") + ("" if schedule == "constant" else f"-{schedule}"))


@dataclasses.dataclass(frozen=True)
class KeepNetworks(training.SDXLLoraAdapters):
    """Chapter 09's SDXL LoRA that keeps the networks it trains (to save the judged steps' adapters)."""

    nets: dict = dataclasses.field(default_factory=dict)

    def parameters(self, config, nets, schedule):
        self.nets.update(nets)
        return super().parameters(config, nets, schedule)


method = KeepNetworks()
db.setup(show=False)
config = sdxl_lora_config(output_dir=str(out), lora_rank=rank, learning_rate=lr, max_train_steps=steps, seed=seed,
                          prior_loss_weight=prior_weight, validation_prompt=None, train_text_encoder=bool(text_lr),
                          lr_scheduler=schedule, lr_warmup_steps=0, lora_layers="all",
                          **({"text_encoder_lr": text_lr} if text_lr else {}))


def keep_judged_steps(history: list) -> None:
    if len(history) in judge_at:
        from mindone.diffusers import StableDiffusionXLPipeline
        lora.save_adapters(StableDiffusionXLPipeline, method.nets, out / f"step-{len(history)}", config)


start = time.time()
engine.train_dreambooth(config, progress=False, method=method, on_step=keep_judged_steps)
print("trained", out, round(time.time() - start), "s", flush=True)
pipe = load_sdxl_pipeline(config.pretrained_model_name_or_path)
for step, folder in [*((n, out / f"step-{n}") for n in judge_at), (steps, out)]:
    scores = lora.adapter_scores(pipe, folder, 0)
    print(f"step {step}:", {k: round(v, 2) for k, v in scores.items() if isinstance(v, float)}, flush=True)

"""LoRA on more layers than the reference's attention projections: chapter 08's run (seed SEED) with adapters on the
layers EXTRA names as well, optionally the UNet's normalisation weights trained directly beside them at a rate of
their own (NORM_LR, a second parameter group), judged as chapter 08 judges (the adapters merged into the installed
model, its norms replaced by the trained ones).

    EXTRA=conv1,conv2 RANK=4 LR=3e-3 python pretraining/toyworld-v6/lora_targets_pilot.py
    EXTRA=conv1,conv2,conv_shortcut,conv RANK=16 LR=1e-3 python pretraining/toyworld-v6/lora_targets_pilot.py
    EXTRA=conv1,conv2,conv_shortcut,conv RANK=16 LR=2e-3 PW=0.5 python pretraining/toyworld-v6/lora_targets_pilot.py
    NORM_LR=1e-4 python pretraining/toyworld-v6/lora_targets_pilot.py
    PW=0.5 STEPS=1200 JUDGE_AT=300,600,900 SEED=0 python pretraining/toyworld-v6/lora_targets_pilot.py

RANK (16), LR (1e-3), STEPS (600), PW (prior loss weight, 1), SEED (0), EXTRA (layer names, commas between; by
default every convolution and linear layer the reference leaves out: --lora_layers=all), NORM_LR (0: the
norms frozen) and JUDGE_AT (steps whose adapters are judged as well as the last step's, commas between: fidelity moves
by tens of points from one checkpoint to the next). The run goes to
outputs/pilots/lora-<EXTRA or all>-r<RANK>-lr<LR>-<STEPS>-pw<PW>-s<SEED>[-norms<NORM_LR>], with the trained norms
beside the adapter file (norms.npz: the adapter file, as diffusers names it, has no place for them) and each judged
step's in step-<N>/. About 5 minutes a 600-step run on 2 cores, and 30 s a judged step.
"""

import dataclasses
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

import mindspore as ms  # noqa: E402

import dreambooth_nb as db  # noqa: E402
from dreambooth_nb import lora  # noqa: E402
from dreambooth_nb.train import engine  # noqa: E402

rank, lr, steps = int(os.environ.get("RANK", 16)), float(os.environ.get("LR", 1e-3)), int(os.environ.get("STEPS", 600))
norm_lr, prior_weight = float(os.environ.get("NORM_LR", 0)), float(os.environ.get("PW", 1.0))
seed = int(os.environ.get("SEED", 0))
judge_at = [int(n) for n in os.environ.get("JUDGE_AT", "").split(",") if n and int(n) < steps]
extra = os.environ.get("EXTRA")  # --lora_layers: the reference's attention layers and these, else 'all'
layers = "+".join(extra.split(",")) if extra else "all"
out = Path(f"outputs/pilots/lora-{layers}-r{rank}-lr{lr:g}-{steps}-pw{prior_weight:g}-s{seed}"
           + (f"-norms{norm_lr:g}" if norm_lr else ""))


def is_norm(weight) -> bool:
    return ".norm" in weight.name or weight.name.startswith("norm") or "conv_norm_out" in weight.name


@dataclasses.dataclass(frozen=True)
class LoraAndNorms(engine.StableDiffusionMethod):
    """LoRA on the targets, and the UNet's norms trained directly at norm_lr (a parameter group of their own)."""

    norm_lr: float = 0.0
    trained_norms: dict = dataclasses.field(default_factory=dict)
    nets: dict = dataclasses.field(default_factory=dict)

    def parameters(self, config, nets, schedule):
        self.nets.update(nets)
        adapters = engine.trainable_weights(nets)
        norms = [w for w in nets["unet"].get_parameters() if is_norm(w) and ".lora" not in w.name]
        if self.norm_lr <= 0:
            return adapters
        for weight in norms:
            weight.requires_grad = True
        self.trained_norms.update({w.name: w for w in norms})
        print(f"adapters: {len(adapters)} tensors; norms: {len(norms)} tensors, {sum(int(w.size) for w in norms):,} "
              f"weights at lr {self.norm_lr:g}", flush=True)
        ratio = self.norm_lr / config.learning_rate
        return [{"params": adapters}, {"params": norms, "lr": [v * ratio for v in schedule]}]


method = LoraAndNorms(**{f.name: getattr(lora.LORA, f.name) for f in dataclasses.fields(lora.LORA)}, norm_lr=norm_lr)

db.setup(show=False)
config = db.lora_config(output_dir=str(out), lora_rank=rank, learning_rate=lr, max_train_steps=steps, seed=seed,
                        prior_loss_weight=prior_weight, lora_layers=f"to_k,to_q,to_v,to_out.0,{extra}" if extra else "all")


def save_norms(folder: Path) -> None:
    np.savez(folder / "norms.npz", **{name.replace(".", "/"): w.asnumpy() for name, w in method.trained_norms.items()})


def keep_judged_steps(history: list) -> None:
    if len(history) in judge_at:
        from mindone.diffusers import StableDiffusionPipeline
        folder = out / f"step-{len(history)}"
        lora.save_adapters(StableDiffusionPipeline, method.nets, folder, config)
        save_norms(folder)


start = time.time()
engine.train_dreambooth(config, progress=False, method=method, on_step=keep_judged_steps)
print("trained", out, round(time.time() - start), "s", flush=True)
save_norms(out)

pipe = db.load_pipeline("toy-world")
base = {p.name: p for p in pipe.unet.get_parameters()}
original = {name: w.asnumpy() for name, w in base.items() if is_norm(w)}
for step, folder in [*((n, out / f"step-{n}") for n in judge_at), (steps, out)]:
    saved = np.load(folder / "norms.npz")
    for name, value in original.items():
        base[name].set_data(ms.Tensor(value))
    for key in saved.files:
        base[key.replace("/", ".")].set_data(ms.Tensor(saved[key]))
    scores = lora.adapter_scores(pipe, folder, 0)
    print(f"step {step}:", {k: round(v, 2) for k, v in scores.items() if isinstance(v, float)}, flush=True)

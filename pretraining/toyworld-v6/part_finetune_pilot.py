"""Which UNet weights carry the subject: dreambooth_pilot.py with only part of the UNet trained, at full rank.

    PART=attention VARIANT='{"recipe": "prior weight 0.5", "seed": 0}' NAME=attn-only-full-rank-0 \
        python pretraining/toyworld-v6/part_finetune_pilot.py
    PART=all-but-attention VARIANT='{"recipe": "prior weight 0.5", "seed": 0}' NAME=all-but-attention-0 \
        python pretraining/toyworld-v6/part_finetune_pilot.py

PART=attention trains only the attention projections LoRA adapts (to_q, to_k, to_v, to_out); PART=all-but-attention
trains every other UNet weight; PART=only:conv1,conv2 trains the weights of layers with those names. VARIANT and NAME are dreambooth_pilot.py's (its results go to outputs/pilots/).
"""

import dataclasses
import os

from pilot_method import run_pilot_with  # also puts the repository on sys.path

from dreambooth_nb.train import engine

ATTENTION = ("to_q", "to_k", "to_v", "to_out")
PART = os.environ.get("PART", "attention")
if PART not in ("attention", "all-but-attention") and not PART.startswith("only:"):
    raise SystemExit(f"PART={PART}: give attention, all-but-attention or only:<layer names, commas between>")


def named(weight, names) -> bool:
    return any(f".{name}." in weight.name for name in names)


def trains(weight) -> bool:
    if PART.startswith("only:"):
        return named(weight, PART[len("only:"):].split(","))
    return named(weight, ATTENTION) == (PART == "attention")


@dataclasses.dataclass(frozen=True)
class PartOfUNet(engine.StableDiffusionMethod):
    """Full fine-tuning with only PART of the UNet's weights trained (the rest frozen)."""

    def parameters(self, config, nets, schedule):
        weights = engine.trainable_weights(nets)
        kept = [w for w in weights if trains(w)]
        for weight in weights:
            weight.requires_grad = any(weight is k for k in kept)
        print(f"trained weights ({PART}): {len(kept)} of {len(weights)} tensors, {sum(int(w.size) for w in kept):,}")
        return kept


if __name__ == "__main__":
    run_pilot_with(PartOfUNet)

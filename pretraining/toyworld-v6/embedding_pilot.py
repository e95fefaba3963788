"""DreamBooth with the UNet and only the text encoder's token embeddings trained (its transformer frozen):
dreambooth_pilot.py's run, where `--train_text_encoder` would train the whole encoder.

    VARIANT='{"recipe": "text encoder trained", "changes": {"prior_loss_weight": 0.25}, "seed": 0}' \
        NAME=embeddings-pw025-0 python pretraining/toyworld-v6/embedding_pilot.py

The idea: the identifier's embedding can move away from the article's (the frozen encoder reads `sks star` almost as
`a star`) while the layers that read the context words stay as pretraining left them. Words that never appear in the
training prompts (backgrounds, places, sizes) get no gradient, so their embeddings stay too. VARIANT and NAME are
dreambooth_pilot.py's (results in outputs/pilots/); the recipe must train the text encoder.
"""

import dataclasses

from pilot_method import run_pilot_with  # also puts the repository on sys.path

from dreambooth_nb.train import engine


@dataclasses.dataclass(frozen=True)
class UNetAndEmbeddings(engine.StableDiffusionMethod):
    """Full fine-tuning of the UNet with the text encoder's token embeddings (its transformer frozen)."""

    def parameters(self, config, nets, schedule):
        weights = engine.trainable_weights(nets)
        kept = [w for name, net in nets.items() for w in net.trainable_params()
                if name != "text_encoder" or "token_embedding" in w.name]
        for weight in weights:
            weight.requires_grad = any(weight is k for k in kept)
        print(f"trained weights: {len(kept)} of {len(weights)} tensors, {sum(int(w.size) for w in kept):,}; of the "
              f"text encoder {[w.name for w in nets['text_encoder'].trainable_params() if w.requires_grad]}")
        return kept


if __name__ == "__main__":
    run_pilot_with(UNetAndEmbeddings)

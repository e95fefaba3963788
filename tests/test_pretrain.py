"""The toy world's pretraining stages, on the tiny model (mechanics only; the real run is in the model card)."""

from argparse import Namespace

import numpy as np

from dreambooth_nb.common import runtime, scenes
from dreambooth_nb.models import load_components
from dreambooth_nb.toyworld import pretrain


def test_the_decoder_stage_leaves_the_encoder_and_so_the_latents_unchanged(tmp_path):
    runtime.setup(show=False, seed=0)
    vae = load_components("tiny-random").vae
    before = {n: p.asnumpy().copy() for n, p in vae.parameters_and_names()}
    images, _, _ = scenes.dataset(8, seed=0)
    args = Namespace(seed=0, vae_batch=2, decoder_lr=1e-2, decoder_steps=2)
    log = pretrain.train_decoder(vae, images, args, tmp_path)
    after = {n: p.asnumpy() for n, p in vae.parameters_and_names()}
    frozen = [n for n in before if n.startswith(("encoder.", "quant_conv."))]
    trained = [n for n in before if n.startswith(("decoder.", "post_quant_conv."))]
    assert frozen and all(np.array_equal(before[n], after[n]) for n in frozen)
    assert any(not np.array_equal(before[n], after[n]) for n in trained)
    assert len(log.history) == 2 and (tmp_path / "decoder" / "checkpoint-2").is_dir()
    assert all(p.requires_grad for p in vae.get_parameters()), "the other stages train the whole VAE again"

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


def test_the_learning_curve_appends_each_step_once_and_draws_it(tmp_path, monkeypatch):
    """curve_probe: one point per probed step in curve.json (a resumed run does not measure a step again), and
    curve.png redrawn; the scores come from evaluate (stubbed here: they are tested in test_toyworld)."""
    import json

    from dreambooth_nb.models import load_components
    from dreambooth_nb.toyworld import evaluate, pretrain

    calls = []
    monkeypatch.setattr(evaluate, "prompt_following", lambda pipe, seed, **kw: calls.append(seed) or
                        {"shape": 0.5, "colour": 0.25, "background": 1.0, "size": 0.75, "place": 0.0})
    monkeypatch.setattr(evaluate, "context_following", lambda pipe, seed, **kw: {"background follows": 0.9,
                                                                                  "place follows": 0.1})
    probe = pretrain.curve_probe(load_components("toy-world"), tmp_path, seed=0)
    probe(1000)
    probe(1000)  # resumed: already measured
    probe(2000)
    curve = json.loads((tmp_path / "curve.json").read_text())
    assert [p["step"] for p in curve] == [1000, 2000] and len(calls) == 2
    assert curve[0]["background follows"] == 0.9 and 0 < curve[0]["identifier distance"] < 1
    assert (tmp_path / "curve.png").stat().st_size > 1000

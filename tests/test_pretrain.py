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


def test_a_further_stage_starts_the_unet_and_text_encoder_from_the_given_model(tmp_path):
    """--unet_from: the stage continues an earlier model (its UNet and text encoder) instead of fresh weights."""
    from dreambooth_nb.common.assets import resolve_model

    runtime.setup(show=False, seed=0)
    model = resolve_model("toy-world")
    earlier = load_components(model)
    further = pretrain.build_components(tmp_path, schedule="zero-snr", vae_from=model, unet_from=model)
    fresh = pretrain.build_components(tmp_path, schedule="zero-snr", vae_from=model)
    for name in ("unet", "text_encoder"):
        weights = {n: p.asnumpy() for n, p in getattr(earlier, name).parameters_and_names()}
        assert all(np.array_equal(weights[n], p.asnumpy()) for n, p in getattr(further, name).parameters_and_names())
        assert not all(np.array_equal(weights[n], p.asnumpy()) for n, p in getattr(fresh, name).parameters_and_names())
    assert further.noise_scheduler.config.prediction_type == "v_prediction"


def test_the_card_lists_the_runs_that_made_the_weights_and_chains_their_commands(tmp_path):
    """A VAE run, a UNet run from scratch on its VAE, a further stage: the card's stages name each once (the VAE
    run's own UNet, unused, left out of the list and of the minutes), each command reading the folder its earlier run
    wrote."""
    import json

    from dreambooth_nb.toyworld import card

    def run(name: str, seconds: dict, **args) -> dict:
        summary = {"args": {"out": f"outputs/{name}", "unet_steps": 10, **args}, "stage_s": seconds}
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps(summary))
        return summary

    run("a", {"vae": 600.0, "decoder": 600.0, "unet": 6000.0})
    run("b", {"unet": 1200.0}, vae_from=str(tmp_path / "a" / "model"))
    last = run("c", {"unet": 600.0}, vae_from=str(tmp_path / "a" / "model"), unet_from=str(tmp_path / "b" / "model"))
    last["earlier"] = card.earlier_runs(last["args"])
    stages = card.stages(last)
    assert [(what, s["args"]["out"]) for what, s in stages] == [
        ("VAE", "outputs/a"), ("UNet", "outputs/b"), ("UNet", "outputs/c")]
    assert stages[0][1]["args"]["unet_steps"] == 0, "the VAE run's command skips the UNet it does not contribute"
    assert stages[1][1]["args"]["vae_from"] == "outputs/a/model"
    assert stages[2][1]["args"]["unet_from"] == "outputs/b/model"
    assert sum(card.stage_minutes(what, s) for what, s in stages) == 50.0
    # a UNet from scratch on the VAE a later model passed on: its command reads the VAE run's folder
    fresh = run("d", {"unet": 600.0}, vae_from=str(tmp_path / "c" / "model"), unet_channels=[64, 96, 96])
    fresh["earlier"] = card.earlier_runs(fresh["args"])
    stages = card.stages(fresh)
    assert [(what, s["args"]["out"]) for what, s in stages] == [("VAE", "outputs/a"), ("UNet", "outputs/d")]
    assert stages[1][1]["args"]["vae_from"] == "outputs/a/model"
    assert "--unet_channels 64 96 96 " in card.reproduce_command(stages[1][1]["args"])

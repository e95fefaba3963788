"""The training engine end to end on the tiny model: stop and resume give the same weights, checkpoints, outputs."""

import json

import numpy as np
import pytest

import dreambooth_nb as db
from dreambooth_nb.common import runtime
from dreambooth_nb.train import checkpoint as ckpt
from dreambooth_nb.train.report import read_metrics

STEPS, STOP = 6, 3
TINY = "tiny-random"  # the random tiny model: fastest to build, and its weights move visibly in 6 steps


def _config(output_dir, **changes) -> db.TrainConfig:
    settings = dict(pretrained_model_name_or_path=TINY, output_dir=str(output_dir), resolution=32, train_batch_size=1,
                    max_train_steps=STEPS, learning_rate=1e-3, lr_scheduler="cosine", lr_warmup_steps=1, seed=0, checkpointing_steps=2,
                    report_to="none", center_crop=False)
    return db.TrainConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run that never stops, and one stopped after STOP steps then resumed from 'latest' in a fresh process state."""
    runtime.setup(device="CPU", show=False)
    root = tmp_path_factory.mktemp("train")
    full_components = db.load_components(TINY)
    full = db.train_dreambooth(
        _config(root / "full", checkpoints_total_limit=2, report_to="tensorboard",
                validation_prompt="a photo of sks person", validation_steps=STEPS, num_validation_images=1),
        full_components, progress=False)
    stopped = db.train_dreambooth(_config(root / "stopped"), db.load_components(TINY), progress=False,
                                  on_step=db.stop_after(STOP))
    stopped_listing = sorted(p.name for p in (root / "stopped").iterdir())
    resumed = db.train_dreambooth(_config(root / "stopped", resume_from_checkpoint="latest"), db.load_components(TINY),
                                  progress=False)
    return dict(root=root, full=full, full_components=full_components, stopped=stopped,
                stopped_listing=stopped_listing, resumed=resumed)


def _weights(folder):
    from safetensors.numpy import load_file

    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


@pytest.mark.slow
def test_stopped_and_resumed_run_ends_with_the_same_weights(runs):
    full, resumed = _weights(runs["root"] / "full"), _weights(runs["root"] / "stopped")
    assert full.keys() == resumed.keys()
    for key in full:
        np.testing.assert_allclose(resumed[key], full[key], atol=1e-6, err_msg=key)
    np.testing.assert_allclose(runs["resumed"].losses(), runs["full"].losses(), rtol=1e-6)
    assert runs["resumed"].resumed_from.name == f"checkpoint-{STOP}" and runs["resumed"].steps == STEPS


@pytest.mark.slow
def test_interrupt_writes_a_checkpoint_and_keeps_earlier_ones(runs):
    stopped = runs["stopped"]
    assert stopped.interrupted and stopped.steps == STOP and len(stopped.history) == STOP
    assert "checkpoint-2" in runs["stopped_listing"] and f"checkpoint-{STOP}" in runs["stopped_listing"]
    assert not [name for name in runs["stopped_listing"] if ".tmp" in name]  # no half-written folders
    state = json.loads((runs["root"] / "stopped" / f"checkpoint-{STOP}" / ckpt.STATE_FILE).read_text())
    assert state["step"] == STOP and state["trained"] == ["unet"] and len(state["history"]) == STOP
    assert set(state["rng"]) == {"python", "numpy"}
    from safetensors.numpy import load_file

    optimizer = load_file(str(runs["root"] / "stopped" / f"checkpoint-{STOP}" / ckpt.OPTIMIZER_FILE))
    assert int(optimizer["global_step"][0]) == STOP
    assert any(k.startswith("adam_m/unet/") for k in optimizer) and any(k.startswith("adam_v/unet/") for k in optimizer)


@pytest.mark.slow
def test_checkpoint_limit_logs_and_validation_images(runs):
    out = runs["root"] / "full"
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["checkpoint-4", "checkpoint-6"]
    metrics = read_metrics(out / "logs" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert [m["loss"] for m in metrics] == pytest.approx(runs["full"].losses())
    assert metrics[-1]["val_loss"] > 0 and "val_loss" not in metrics[0], "the fixed-noise loss comes with validation"
    assert metrics[0]["lr"] < metrics[2]["lr"]  # warmup
    assert list((out / "logs").glob("events.out.tfevents.*")), "report_to='tensorboard' wrote no TensorBoard file"
    images = sorted((out / "validation" / f"step-{STEPS}").glob("*.png"))
    assert len(images) == 1 and runs["full"].validation[STEPS] == images


@pytest.mark.slow
def test_saved_model_reloads_with_the_trained_weights(runs):
    from mindone.diffusers import StableDiffusionPipeline

    out = runs["root"] / "full"
    pipe = StableDiffusionPipeline.from_pretrained(str(out))
    trained = dict(runs["full_components"].unet.parameters_and_names())
    for name, param in pipe.unet.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), trained[name].asnumpy(), err_msg=name)
    assert pipe.unet.config.sample_size == 16  # the training resolution, 32 px, in latents
    assert json.loads((out / "train_config.json").read_text())["max_train_steps"] == STEPS


@pytest.mark.slow
def test_a_checkpoint_loads_as_a_pipeline(runs):
    pipe = db.load_pipeline(str(runs["root"] / "full" / "checkpoint-4"))
    saved = _weights(runs["root"] / "full" / "checkpoint-4")
    np.testing.assert_array_equal(dict(pipe.unet.parameters_and_names())["conv_in.weight"].asnumpy(),
                                  saved["conv_in.weight"])


@pytest.mark.slow
def test_with_prior_the_history_holds_both_terms_and_they_add_up(tmp_path):
    """Every step records the instance and prior terms; instance + prior_loss_weight x prior is the total."""
    from PIL import Image

    runtime.setup(device="CPU", show=False)
    classes = tmp_path / "classes"
    classes.mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(classes / f"c{i}.png")
    config = _config(tmp_path / "prior", max_train_steps=3, with_prior_preservation=True, prior_loss_weight=0.5,
                     class_prompt="a photo of a person", class_data_dir=str(classes), num_class_images=2,
                     report_to="tensorboard")
    result = db.train_dreambooth(config, db.load_components(TINY), progress=False)
    for record in result.history:
        assert record["instance_loss"] > 0 and record["prior_loss"] > 0
        assert record["loss"] == pytest.approx(record["instance_loss"] + 0.5 * record["prior_loss"], rel=1e-5)
    logged = read_metrics(tmp_path / "prior" / "logs" / "metrics.jsonl")
    assert [m["prior_loss"] for m in logged] == pytest.approx(result.losses("prior_loss"))
    assert "prior term" in " ".join(text.get_text() for text in result.plot().axes[0].get_legend().get_texts())

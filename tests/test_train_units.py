"""Training pieces that need no compiled graph: loss maths, lr schedule, batches, checkpoint files, settings."""

import dataclasses
import json
import os
import socket
from dataclasses import fields

import numpy as np
import pytest

from dreambooth_nb.common import runtime
from dreambooth_nb.train import checkpoint as ckpt
from dreambooth_nb.train import output
from dreambooth_nb.train import engine
from dreambooth_nb.common.config import ConfigError, TrainConfig, tutorial_config
from dreambooth_nb.train import step
from dreambooth_nb import prior
from dreambooth_nb import batches


@pytest.fixture(scope="module", autouse=True)
def cpu():
    runtime.setup(device="CPU", show=False)


# ------------------------------------------------------------------------------- losses
def test_dreambooth_loss_is_instance_mse_plus_weighted_prior_mse():
    import mindspore as ms

    from dreambooth_nb.losses import dreambooth_loss

    rng = np.random.default_rng(0)
    pred, target = (rng.standard_normal((4, 2, 3, 3)).astype(np.float32) for _ in range(2))
    weights = np.array([1.0, 0.5, 2.0, 1.0], np.float32)
    per_example = ((pred - target) ** 2).mean(axis=(1, 2, 3)) * weights
    total, instance, prior = dreambooth_loss(ms.Tensor(pred), ms.Tensor(target), ms.Tensor(weights), True, 0.7)
    np.testing.assert_allclose(float(prior.asnumpy()), per_example[2:].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(instance.asnumpy()), per_example[:2].mean(), rtol=1e-6)
    np.testing.assert_allclose(float(total.asnumpy()), per_example[:2].mean() + 0.7 * per_example[2:].mean(), rtol=1e-6)
    plain, same, zero = dreambooth_loss(ms.Tensor(pred), ms.Tensor(target), ms.Tensor(weights), False, 0.7)
    np.testing.assert_allclose(float(plain.asnumpy()), per_example.mean(), rtol=1e-6)
    assert float(same.asnumpy()) == float(plain.asnumpy()) and float(zero.asnumpy()) == 0.0


def test_snr_weights_follow_min_snr_gamma():
    import mindspore as ms

    from dreambooth_nb.losses import snr_weights

    alphas = np.linspace(0.999, 0.01, 1000).astype(np.float32)
    t = np.array([0, 300, 999], np.int32)
    snr = alphas[t] / (1 - alphas[t])
    eps = snr_weights(ms.Tensor(alphas), ms.Tensor(t), 5.0, v_prediction=False).asnumpy()
    v = snr_weights(ms.Tensor(alphas), ms.Tensor(t), 5.0, v_prediction=True).asnumpy()
    np.testing.assert_allclose(eps, np.minimum(snr, 5.0) / snr, rtol=1e-5)
    np.testing.assert_allclose(v, np.minimum(snr, 5.0) / (snr + 1), rtol=1e-5)
    assert eps[0] < 1 and eps[-1] == pytest.approx(1.0)  # clean timesteps are down-weighted, noisy ones kept


# ---------------------------------------------------------------------------- lr schedule
def test_lr_schedule_has_a_spare_entry_and_scales():
    config = TrainConfig(learning_rate=1e-4, lr_scheduler="linear", lr_warmup_steps=2)
    values = step.lr_schedule(config, 10)
    assert len(values) == 11 and values[-1] == values[-2]
    assert values[0] == 0 and values[2] == pytest.approx(1e-4) and values[9] < values[2]
    scaled = config.replace(scale_lr=True, gradient_accumulation_steps=2, train_batch_size=3)
    assert scaled.learning_rate_for(world_size=4) == pytest.approx(1e-4 * 2 * 3 * 4)
    assert max(step.lr_schedule(scaled, 10, world_size=4)) == pytest.approx(2.4e-3)


def test_total_steps_counts_optimizer_steps():
    config = TrainConfig(train_batch_size=2, num_train_epochs=3, gradient_accumulation_steps=2)
    assert engine.total_steps(config, num_images=5) == 3 * 2  # ceil(5 / (2 x 2)) per epoch
    assert engine.total_steps(config, num_images=5, world=2) == 3
    assert engine.total_steps(config.replace(max_train_steps=7), num_images=5) == 7


# ---------------------------------------------------------------------------------- batches
def _image_set(n, token):
    from PIL import Image

    from dreambooth_nb.batches import ImageSet

    images = [Image.new("RGB", (40, 32), (10 * i, 20, 30)) for i in range(n)]
    return ImageSet(images, np.array([[49406, token, 49407, 49407]], np.int32), f"prompt {token}",
                    np.array([[1, 1, 1, 0]], np.int32))  # the tokenizer's mask: padding repeats <|endoftext|>


def test_batch_maker_is_pure_in_the_step_and_splits_ranks():
    config = TrainConfig(resolution=32, train_batch_size=2, with_prior_preservation=True,
                         class_prompt="c", class_data_dir="x")
    make = lambda rank: batches.BatchMaker(_image_set(5, 1), _image_set(3, 2), config, (4, 16, 16), 1000, 0, rank, 2)
    a, b = make(0)(3), make(0)(3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    pixels, ids, mask, vae_noise, noise, timesteps = a
    assert pixels.shape == (4, 3, 32, 32) and ids.shape == (4, 4) and noise.shape == (4, 4, 16, 16)
    assert list(ids[:, 1]) == [1, 1, 2, 2]  # instance half first, then the class half
    assert mask[0].tolist() == [1, 1, 1, 0]
    other = make(1)(3)
    assert not np.array_equal(other[4], noise)  # rank 1 draws its own noise


def test_batch_maker_uses_precomputed_embeddings():
    config = TrainConfig(resolution=32, train_batch_size=2)
    embedding = np.full((1, 4, 8), 0.5, np.float32)
    pixels, ids, *_ = batches.BatchMaker(_image_set(3, 1), None, config, (4, 16, 16), 1000, 0,
                                        embeddings=(embedding,))(0)
    assert ids.shape == (2, 4, 8) and ids.dtype == np.float32 and np.all(ids == 0.5)


# ---------------------------------------------------------------------------------- checkpoints
def _fake_checkpoint(folder, step):
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / ckpt.STATE_FILE).write_text(json.dumps({"step": step}))
    (path / "unet").mkdir()
    (path / "unet" / "weights.bin").write_bytes(bytes(range(256)) * 4)
    ckpt.write_manifest(path)
    return path


def test_find_list_and_prune_checkpoints(tmp_path):
    for step in (10, 2, 30):
        _fake_checkpoint(tmp_path, step)
    (tmp_path / "checkpoint-40").mkdir()  # no state.json: incomplete, never used
    (tmp_path / ".checkpoint-50.tmp-123").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10", "checkpoint-30"]
    assert ckpt.find_checkpoint("latest", tmp_path).name == "checkpoint-30"
    assert ckpt.find_checkpoint("checkpoint-10", tmp_path).name == "checkpoint-10"
    assert ckpt.find_checkpoint(None, tmp_path) is None
    assert ckpt.find_checkpoint("latest", tmp_path / "empty") is None
    with pytest.raises(FileNotFoundError, match="checkpoint-40"):
        ckpt.find_checkpoint("checkpoint-40", tmp_path)
    removed = ckpt.prune_checkpoints(tmp_path, limit=2)
    assert [p.name for p in removed] == ["checkpoint-2"]
    assert [p.name for p in output.remove_stale_temporaries(tmp_path)] == [".checkpoint-50.tmp-123"]


def test_a_damaged_checkpoint_is_named_and_the_last_intact_one_offered(tmp_path):
    for step in (10, 20):
        _fake_checkpoint(tmp_path, step)
    weights = tmp_path / "checkpoint-20" / "unet" / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0x01  # one flipped bit
    weights.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError) as error:
        ckpt.find_checkpoint("latest", tmp_path)
    message = str(error.value)
    assert "checkpoint-20" in message and "unet/weights.bin does not match" in message
    assert "--resume_from_checkpoint=checkpoint-10" in message and "\n" not in message
    (tmp_path / "checkpoint-10" / ckpt.MANIFEST_FILE).unlink()
    with pytest.raises(ckpt.CheckpointError, match="No intact checkpoint"):
        ckpt.find_checkpoint("latest", tmp_path)


def test_resuming_with_other_training_settings_is_refused(tmp_path):
    saved = dataclasses.asdict(TrainConfig(train_batch_size=1, learning_rate=1e-4))
    now = TrainConfig(train_batch_size=2, learning_rate=1e-4, max_train_steps=900)  # more steps is fine
    assert ckpt.mismatched_settings(saved, now) == {"train_batch_size": (1, 2)}
    with pytest.raises(ckpt.CheckpointError, match="--train_batch_size was 1, now 2"):
        ckpt.check_settings(tmp_path / "checkpoint-5", {"config": saved}, now)
    ckpt.check_settings(tmp_path, {"config": saved}, now.replace(train_batch_size=1, validation_steps=7))


def test_an_unreadable_checkpoint_is_one_line_naming_it(tmp_path):
    path = _fake_checkpoint(tmp_path, 5)
    (path / ckpt.STATE_FILE).write_text('{"step": 5, "trained": ["unet"], "rng":')
    with pytest.raises(ckpt.CheckpointError, match="checkpoint-5 cannot be resumed"):
        ckpt.load_checkpoint(path, {}, optimizer=None)


def test_one_run_per_output_folder(tmp_path):
    lock = output.RunLock.acquire(tmp_path)
    with pytest.raises(output.OutputError, match=f"process {os.getpid()}"):
        output.RunLock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / output.LOCK_FILE).exists()
    (tmp_path / output.LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname(),
                                                         "started": "01:02:03"}))
    output.RunLock.acquire(tmp_path).release()  # a killed process's lock is cleared


def test_a_new_run_keeps_the_earlier_one_and_says_where(tmp_path, capsys):
    (tmp_path / "unet").mkdir()
    (tmp_path / "model_index.json").write_text("{}")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "metrics.jsonl").write_text('{"step": 1}\n' * 50)
    (tmp_path / "my-notes.txt").write_text("mine")
    _fake_checkpoint(tmp_path, 5)
    kept = output.keep_earlier_run(tmp_path)
    assert sorted(p.name for p in kept.iterdir()) == ["checkpoint-5", "logs", "model_index.json", "unet"]
    assert (kept / "logs" / "metrics.jsonl").read_text().count("\n") == 50, "nothing truncated"
    assert (tmp_path / "my-notes.txt").is_file() and output.keep_earlier_run(tmp_path) is None
    for i in range(output.KEEP_PREVIOUS + 1):
        (tmp_path / "model_index.json").write_text("{}")
        output.keep_earlier_run(tmp_path)
    assert len(list((tmp_path / output.PREVIOUS_DIR).iterdir())) == output.KEEP_PREVIOUS
    assert "removed" in capsys.readouterr().out


def test_an_unwritable_or_full_output_folder_is_found_before_training(tmp_path, monkeypatch):
    import shutil

    locked = tmp_path / "read-only"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root ignores permissions: check the message path with a file instead
        locked = tmp_path / "a-file"
        locked.write_text("x")
    with pytest.raises(output.OutputError, match="Cannot write to --output_dir"):
        output.check_writable(locked, 0)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10 * 2**20))
    with pytest.raises(output.OutputError, match="10 MB free"):
        output.check_writable(tmp_path / "ok", output.bytes_needed(2**20, 2**20, 2, 10))


def test_rng_state_round_trip():
    import random

    ckpt.set_rng_state(json.loads(json.dumps(ckpt.rng_state())))
    state = ckpt.rng_state()
    first = (random.random(), np.random.rand())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand()) == first


# ------------------------------------------------------------------------------ devices
def test_precision_and_data_sink_fall_back_on_cpu(capsys):
    assert engine.precision_for("fp16", "CPU") == engine.Precision()
    assert "fp32 on CPU" in capsys.readouterr().err
    assert engine.precision_for("fp16", "Ascend") == engine.Precision("float16", 65536.0)
    assert engine.precision_for("bf16", "Ascend") == engine.Precision("bfloat16")
    assert engine.precision_for("no", "Ascend") == engine.Precision()
    assert engine.use_data_sink(True, "CPU") is False
    assert "Ascend only" in capsys.readouterr().err
    assert engine.use_data_sink(True, "Ascend") is True


def test_graph_neutral_settings_leave_out_what_shapes_the_step():
    from dreambooth_nb.common.config import names_with

    neutral = set(names_with(TrainConfig, "graph_neutral"))
    assert {"output_dir", "seed", "validation_prompt"} <= neutral
    assert not {"learning_rate", "max_grad_norm", "snr_gamma", "train_text_encoder", "resolution"} & neutral


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize("changes, flag", [
    (dict(train_text_encoder=True, pre_compute_text_embeddings=True), "--pre_compute_text_embeddings"),
    (dict(adam_beta2=1.0), "--adam_beta2"),
    (dict(adam_epsilon=0.0), "--adam_epsilon"),
    (dict(seed=-1), "--seed"),
    (dict(lr_power=0.0), "--lr_power"),
    (dict(validation_images=["a.png"]), "--validation_images"),
    (dict(distributed=True), "msrun"),
    (dict(gradient_accumulation_steps=0), "--gradient_accumulation_steps"),
])
def test_validate_names_the_flag(changes, flag, monkeypatch):
    for name in ("MS_ROLE", "RANK_TABLE_FILE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match=flag):
        TrainConfig(**changes).validate()


def test_notes_follow_the_reference_warnings():
    notes = TrainConfig(class_prompt="a dog").notes()
    assert any("--class_prompt is ignored" in n for n in notes)
    assert TrainConfig().notes() == []


def test_tutorial_config_is_short_under_the_fast_profile(monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "1")
    config = tutorial_config().validate()
    assert config.max_train_steps <= 8 and config.max_train_steps % config.checkpointing_steps == 0
    assert config.validation_prompt and config.resolution == 32  # the default toy-world model's own size


def test_a_resolution_far_above_the_models_is_refused_with_the_native_size():
    from dreambooth_nb.models import load_components
    from dreambooth_nb.train.engine import check_resolution

    components = load_components("tiny-random")
    check_resolution(64, components)
    check_resolution(256, components)
    with pytest.raises(ValueError, match="4x the 64 px this model was built for.*use --resolution=64"):
        check_resolution(512, components)


def test_attention_mask_comes_from_the_tokenizer_not_from_token_id_0(tmp_path):
    """CLIP pads with <|endoftext|>, not id 0: the mask must mark the padding all the same."""
    from PIL import Image

    from dreambooth_nb.batches import load_image_set
    from dreambooth_nb.models import load_components

    Image.new("RGB", (64, 64), (200, 30, 30)).save(tmp_path / "a.png")
    tokenizer = load_components().tokenizer
    images = load_image_set(tmp_path, "a photo", tokenizer, 32)
    assert images.attention_mask[0].tolist()[:5] == [1, 1, 1, 1, 0]  # <|startoftext|> a photo <|endoftext|> pad
    assert images.input_ids[0, 4] == tokenizer.pad_token_id != 0


def test_validation_readings_judge_each_step_and_prompt_in_the_saved_order(tmp_path):
    from dreambooth_nb.common.scenes import Scene, draw
    from dreambooth_nb.train.report import PROMPTS_FILE, VALIDATION_DIR, validation_readings

    drawn = {0: [("star", "purple", "blue"), ("heart", "green", "red")],  # step: (shape, colour, background) per prompt
             8: [("star", "yellow", "blue"), ("star", "blue", "green")]}
    for step, pictures in drawn.items():
        folder = tmp_path / VALIDATION_DIR / f"step-{step}"
        folder.mkdir(parents=True)
        for k, (shape, colour, background) in enumerate(pictures):
            draw(Scene(shape, colour, background, radius=11.0, x=16.0, y=16.0)).save(folder / f"p{k}-000.png")
        (folder / PROMPTS_FILE).write_text(json.dumps({"prompts": ["subject", "class"], "seeds": [0]}))
    readings = validation_readings(tmp_path)
    assert list(readings) == [0, 8]
    assert {step: [(v.shape, v.colour, v.background) for [v] in per_prompt] for step, per_prompt in readings.items()} == drawn

"""Chapter 08: LoRA DreamBooth on the training engine; the adapter file, resume, and loading it back."""

import json
from dataclasses import fields

import numpy as np
import pytest

import dreambooth_nb as db
from conftest import lora_test_config
from dreambooth_nb import train_lora as cli
from dreambooth_nb.train import cli as train_cli
from dreambooth_nb.common.config import LoraTrainConfig

# mindone's examples/diffusers/dreambooth/train_dreambooth_lora.py: the flags it has that the full script lacks,
# the full script's flags it lacks, and the defaults that differ.
LORA_ONLY = {"lora_rank": 4, "validation_epochs": 50}
NOT_IN_LORA = ("validation_steps", "validation_scheduler", "offset_noise", "snr_gamma", "set_grads_to_none",
               "skip_save_text_encoder")
LORA_DEFAULTS = {"learning_rate": 5e-4, "output_dir": "lora-dreambooth-model", **LORA_ONLY}
TINY = "tiny-random"


def test_every_reference_lora_flag_is_parsed_with_its_default():
    from reference_flags import REFERENCE_DEFAULTS  # the full script's defaults, shared with test_cli

    parser = train_cli.build_parser(LoraTrainConfig)
    options = {o.lstrip("-") for a in parser._actions for o in a.option_strings if o.startswith("--")}
    expected = (set(REFERENCE_DEFAULTS) - set(NOT_IN_LORA)) | set(LORA_ONLY)
    assert expected <= options and not set(NOT_IN_LORA) & options
    config, _ = train_cli.parse_config([], LoraTrainConfig, parser)
    for name, value in {**REFERENCE_DEFAULTS, **LORA_DEFAULTS}.items():
        if name not in NOT_IN_LORA:
            assert getattr(config, name) == value, name
    assert config.command().startswith("python -m dreambooth_nb.train_lora")


@pytest.mark.parametrize("name", NOT_IN_LORA)
def test_a_lora_setting_its_command_lacks_is_refused_so_the_printed_command_is_the_run(name):
    value = {"validation_steps": 7, "validation_scheduler": "DDPMScheduler", "snr_gamma": 5.0}.get(name, True)
    config = LoraTrainConfig(output_dir="out").replace(**{name: value})
    with pytest.raises(db.ConfigError, match=f"has no --{name}"):
        config.validate()
    LoraTrainConfig(output_dir="out").validate()  # at its default it is fine


def test_bad_lora_flags_stop_before_any_work(tmp_path, capsys):
    assert cli.main(["--lora_rank=0", f"--output_dir={tmp_path / 'out'}"]) == 2
    assert "--lora_rank=0 must be at least 1" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_lora_layers_choose_the_unets_adapted_layers_and_an_unknown_one_is_named(capsys, tmp_path):
    """--lora_layers (diffusers' flag): the reference's attention layers by default, 'all' adds every convolution and
    linear layer, a list is taken as given; a name no layer has stops the run naming it (peft would skip it)."""
    from dreambooth_nb.common import runtime
    from dreambooth_nb.common.errors import UserError
    from dreambooth_nb.lora import CONV_AND_LINEAR_LAYERS, LORA, TEXT_TARGETS, UNET_TARGETS
    from dreambooth_nb.models import load_components
    from dreambooth_nb.train.engine import FULL_FINE_TUNING, prepare_networks

    config = lora_test_config(tmp_path)
    assert LORA.adapter_targets(config, "unet") == UNET_TARGETS
    assert LORA.adapter_targets(config.replace(lora_layers="all"), "unet") == UNET_TARGETS + CONV_AND_LINEAR_LAYERS
    assert LORA.adapter_targets(config.replace(lora_layers="conv1, to_q"), "unet") == ("conv1", "to_q")
    assert LORA.adapter_targets(config.replace(lora_layers="conv1"), "text_encoder") == TEXT_TARGETS
    assert FULL_FINE_TUNING.adapter_targets(db.TrainConfig(), "unet") is None

    runtime.setup(device="CPU", show=False)
    with pytest.raises(UserError, match="no layer named 'conv9'; its layers end with: .*conv1") as refused:
        prepare_networks(config.replace(lora_layers="to_q,conv9"), LORA, load_components(TINY))
    assert "to_q'" not in str(refused.value)
    nets = prepare_networks(config.replace(lora_layers="conv1,to_q"), LORA, load_components(TINY))
    adapted = {p.name.split(".lora_")[0].split(".")[-1] for p in nets["unet"].trainable_params()}
    assert adapted == {"conv1", "to_q"}

    assert cli.main(["--lora_layers=to q", f"--output_dir={tmp_path / 'out'}"]) == 2
    assert "--lora_layers='to q'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_adapter_scores_are_judged_once_per_seed_and_file_and_read_back(tmp_path, monkeypatch):
    """Chapter 08 judges its LoRA run once; a rank sweep, chapter 09 or a rerun reads the kept scores and pictures
    back, unless the seed, the profile or the adapter file changed."""
    from PIL import Image

    from dreambooth_nb import lora
    from dreambooth_nb.toyworld import experiments

    judged, merged = [], []
    picture = Image.new("RGB", (32, 32), (200, 10, 10))
    monkeypatch.setattr(lora, "merge_adapters", lambda pipe, folder, strength=1.0: merged.append(folder))
    monkeypatch.setattr(lora, "unmerge_adapters", lambda pipe: merged.append("out"))
    monkeypatch.setattr(experiments, "toy_dreambooth_scores",
                        lambda pipe, seed: judged.append(seed) or {"subject fidelity": 0.5 + seed / 10,
                                                                   "images": {"subject": [picture]}})
    (tmp_path / lora.ADAPTER_FILE).write_bytes(b"adapters, first run")
    first = lora.adapter_scores("pipe", tmp_path, seed=0)
    again = lora.adapter_scores("pipe", tmp_path, seed=0)
    assert judged == [0] and merged == [tmp_path, "out"]  # judged once, the adapters taken out again
    assert again["subject fidelity"] == first["subject fidelity"] == 0.5
    assert np.asarray(again["images"]["subject"][0]).tolist() == np.asarray(picture).tolist()
    assert lora.adapter_scores("pipe", tmp_path, seed=1)["subject fidelity"] == 0.6 and judged == [0, 1]
    (tmp_path / lora.ADAPTER_FILE).write_bytes(b"adapters, retrained")
    lora.adapter_scores("pipe", tmp_path, seed=1)
    assert judged == [0, 1, 1]  # a changed file is judged again


def test_adapters_on_convolutions_are_saved_in_one_naming_and_load_whole(tmp_path):
    """Adapters on layers diffusers has no name for (a ResNet's convolutions) beside the attention's: the file names
    every adapter peft's way, mindone's loader fills every adapter with the file's values (of a file mixing both
    namings it loaded only the convolutions'), and merging changes each adapted weight by B·A."""
    from safetensors.numpy import load_file

    from dreambooth_nb.common import runtime
    from dreambooth_nb.lora import UNET_TARGETS, adapter_updates, lora_pipeline, merge_adapters, save_sd_adapters
    from dreambooth_nb.models import load_components
    from dreambooth_nb.train.adapters import adapter_parameters, add_adapters

    runtime.setup(device="CPU", show=False)
    components = load_components(TINY)
    add_adapters(components.unet, "unet", UNET_TARGETS + ("conv1", "conv2"), rank=2)
    rng = np.random.default_rng(0)
    for p in adapter_parameters(components.unet):  # trained-looking adapters: B no longer zero
        runtime.write_in_place(p, 0.1 * rng.standard_normal(p.shape).astype(np.float32))
    state = load_file(str(save_sd_adapters(components, tmp_path, lora_test_config(tmp_path))))
    assert any(".conv1.lora_A." in k for k in state) and any(".to_q.lora_A." in k for k in state)
    assert not any(".lora.down." in k for k in state), "one naming in the file"

    loaded = dict(lora_pipeline(TINY, tmp_path).unet.parameters_and_names())
    for key, value in state.items():  # unet.<layer>.lora_B.weight -> <layer>.lora_B.default_0.weight
        name = key[len("unet."):].replace(".weight", ".default_0.weight")
        np.testing.assert_array_equal(loaded[name].asnumpy(), value, err_msg=f"{name} not loaded from the file")

    base = db.load_pipeline(TINY)
    before = {k: p.asnumpy().copy() for k, p in base.unet.parameters_and_names()}
    updates = adapter_updates(tmp_path)
    assert merge_adapters(base, tmp_path) == len(updates) == len(state) // 2
    after = dict(base.unet.parameters_and_names())
    for name, update in updates.items():
        np.testing.assert_allclose(after[name].asnumpy(), before[name] + update, atol=1e-6, err_msg=name)
    assert any(update.ndim == 4 and update.shape[-1] == 3 for update in updates.values()), "3 x 3 convolutions merged"


@pytest.fixture(scope="module")
def runs(lora_runs):
    """conftest's shared LoRA runs (full, and its checkpoint-2 resumed)."""
    return lora_runs


@pytest.mark.slow
def test_the_adapter_file_has_diffusers_names_and_only_adapters_trained(runs):
    from safetensors.numpy import load_file

    state = load_file(str(runs["root"] / "full" / "pytorch_lora_weights.safetensors"))
    assert state and all("lora" in k and k.startswith(("unet.", "text_encoder.")) for k in state)
    assert any(k.startswith("text_encoder.") for k in state)  # trained with --train_text_encoder
    assert any(k.endswith(".to_q.lora.down.weight") for k in state) and any(".to_out.0.lora.up." in k for k in state)
    for net, before in runs["before"].items():
        after = {k: p.asnumpy() for k, p in getattr(runs["components"], net).parameters_and_names()}
        base = {k.replace(".base_layer", ""): v for k, v in after.items() if ".lora_" not in k}
        for name, value in before.items():
            np.testing.assert_array_equal(base[name], value, err_msg=f"{net} {name} changed: the base must stay frozen")
    assert (runs["root"] / "full" / "pytorch_lora_weights.safetensors").stat().st_size < 200_000
    checkpoint = runs["root"] / "full" / "checkpoint-6"
    assert (checkpoint / "trained.safetensors").is_file() and not (checkpoint / "unet").exists(), "adapters only"


@pytest.mark.slow
def test_a_lora_run_resumed_from_its_checkpoint_ends_with_the_same_adapters(runs):
    from safetensors.numpy import load_file

    full = load_file(str(runs["root"] / "full" / "pytorch_lora_weights.safetensors"))
    resumed = load_file(str(runs["root"] / "resumed" / "pytorch_lora_weights.safetensors"))
    assert full.keys() == resumed.keys()
    for key in full:
        np.testing.assert_array_equal(resumed[key], full[key], err_msg=key)
    assert runs["resumed"].resumed_from.name == "checkpoint-2"


@pytest.mark.slow
def test_mindone_loads_the_adapters_and_they_change_the_picture(runs):
    import dreambooth_nb as db
    from dreambooth_nb.lora import lora_pipeline, merge_adapters, unmerge_adapters

    adapters = runs["root"] / "full"
    base = db.load_pipeline(TINY)
    plain = db.generate(base, ["a photo of a dog"], [1], num_inference_steps=4, batch_size=1)[0]
    loaded = db.generate(lora_pipeline(TINY, adapters), ["a photo of a dog"], [1], num_inference_steps=4,
                         batch_size=1)[0]
    assert np.abs(np.asarray(plain, int) - np.asarray(loaded, int)).mean() > 0.5, "the adapters change the picture"
    assert merge_adapters(base, adapters, 1.0) > 0
    merged = db.generate(base, ["a photo of a dog"], [1], num_inference_steps=4, batch_size=1)[0]
    assert np.abs(np.asarray(merged, int) - np.asarray(loaded, int)).max() <= 2, "merged weights = loaded adapters"
    unmerge_adapters(base)
    again = db.generate(base, ["a photo of a dog"], [1], num_inference_steps=4, batch_size=1)[0]
    np.testing.assert_array_equal(np.asarray(again), np.asarray(plain))


@pytest.mark.slow
def test_the_run_card_and_settings_are_written(runs):
    settings = json.loads((runs["root"] / "full" / "train_config.json").read_text())
    assert settings["lora_rank"] == 4 and "hub_token" not in settings
    assert (runs["root"] / "full" / "run_card.json").is_file()
    assert {f.name for f in fields(LoraTrainConfig)} >= set(settings)


def test_chapter_08_commands_parse_and_the_full_run_keeps_its_own_learning_rate():
    import shlex

    from dreambooth_nb.common.config import TrainConfig, lora_config
    from dreambooth_nb.lora import full_config_of
    from dreambooth_nb.train import cli as full_cli

    config = lora_config()
    parsed, _ = train_cli.parse_config(shlex.split(config.command())[3:], LoraTrainConfig, train_cli.build_parser(LoraTrainConfig))
    assert parsed.lora_rank == config.lora_rank and parsed.learning_rate == config.learning_rate
    full = full_config_of(config)
    assert full.learning_rate == pytest.approx(config.learning_rate / 10)
    again, _ = full_cli.parse_config(shlex.split(full.command())[3:], TrainConfig, full_cli.build_parser(TrainConfig))
    assert again.learning_rate == full.learning_rate and again.with_prior_preservation


def test_what_a_full_run_shares_is_its_networks_not_its_checkpoints_or_earlier_runs(tmp_path):
    import json

    from dreambooth_nb.lora import pipeline_bytes

    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                           "unet": ["diffusers", "UNet2DConditionModel"],
                                                           "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None]}))
    for sub, size in (("unet", 100), ("vae", 20), ("checkpoint-8/unet", 1000), ("previous-runs/run-1/unet", 5000)):
        (tmp_path / sub).mkdir(parents=True)
        (tmp_path / sub / "diffusion_pytorch_model.safetensors").write_bytes(b"x" * size)
    assert pipeline_bytes(tmp_path) == 120

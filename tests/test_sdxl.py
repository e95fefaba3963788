"""Chapter 09: SDXL's pieces, the derived toy SDXL, and DreamBooth LoRA on SDXL with the training engine."""

import numpy as np
import pytest

from dreambooth_nb import train_sdxl_lora as cli
from dreambooth_nb.train import cli as train_cli
from dreambooth_nb.common.config import SDXLLoraTrainConfig
from conftest import sdxl_test_config

# mindone's examples/diffusers/dreambooth/train_dreambooth_lora_sdxl.py: every flag and its default
SDXL_REFERENCE = {
    "pretrained_vae_model_name_or_path": None, "revision": None, "variant": None, "dataset_name": None,
    "dataset_config_name": None, "instance_data_dir": None, "cache_dir": None, "image_column": "image",
    "caption_column": None, "repeats": 1, "class_data_dir": None, "instance_prompt": None, "class_prompt": None,
    "validation_prompt": None, "num_validation_images": 4, "validation_epochs": 50, "do_edm_style_training": False,
    "with_prior_preservation": False, "prior_loss_weight": 1.0, "num_class_images": 100,
    "output_dir": "lora-dreambooth-model", "seed": None, "resolution": 1024, "center_crop": False,
    "random_flip": False, "train_text_encoder": False, "train_batch_size": 4, "sample_batch_size": 4,
    "num_train_epochs": 1, "max_train_steps": None, "checkpointing_steps": 500, "checkpoints_total_limit": None,
    "resume_from_checkpoint": None, "gradient_accumulation_steps": 1, "gradient_checkpointing": False,
    "learning_rate": 1e-4, "text_encoder_lr": 5e-6, "scale_lr": False, "lr_scheduler": "constant",
    "lr_warmup_steps": 500, "lr_num_cycles": 1, "lr_power": 1.0, "snr_gamma": None, "dataloader_num_workers": 1,
    "enable_mindspore_data_sink": False, "optimizer": "AdamW", "use_8bit_adam": False, "adam_beta1": 0.9,
    "adam_beta2": 0.999, "prodigy_beta3": None, "prodigy_decouple": True, "adam_weight_decay": 1e-4,
    "adam_weight_decay_text_encoder": 1e-3, "adam_epsilon": 1e-8, "prodigy_use_bias_correction": True,
    "prodigy_safeguard_warmup": True, "max_grad_norm": 1.0, "push_to_hub": False, "hub_token": None,
    "hub_model_id": None, "logging_dir": "logs", "allow_tf32": False, "report_to": "tensorboard",
    "mixed_precision": None, "prior_generation_precision": None, "distributed": False,
    "enable_xformers_memory_efficient_attention": False, "lora_rank": 4, "use_dora": False,
}
REQUIRED_THERE = {"pretrained_model_name_or_path", "instance_prompt", "instance_data_dir"}  # defaults here: the toy world


def test_every_reference_sdxl_flag_is_parsed_with_its_default():
    parser = train_cli.build_parser(SDXLLoraTrainConfig)
    options = {o[2:] for a in parser._actions for o in a.option_strings if o.startswith("--")} - {"help", "device"}
    assert options == set(SDXL_REFERENCE) | {"pretrained_model_name_or_path", "lora_layers"}  # diffusers' SD3/Flux flag
    config, _ = train_cli.parse_config([], SDXLLoraTrainConfig, parser)
    for name, value in SDXL_REFERENCE.items():
        if name not in REQUIRED_THERE:
            assert getattr(config, name) == value, name
    assert config.pretrained_model_name_or_path == "toy-world-xl"
    again, _ = train_cli.parse_config(["--prodigy_decouple=false"], SDXLLoraTrainConfig, parser)
    assert again.prodigy_decouple is False  # the reference's type=bool took "false" as True


def test_sdxl_lora_layers_default_to_the_references_attention_and_all_adds_the_rest():
    from dreambooth_nb.common.errors import UserError
    from dreambooth_nb.lora import CONV_AND_LINEAR_LAYERS, TEXT_TARGETS
    from dreambooth_nb.sdxl.training import SDXL_LORA, SDXL_UNET_TARGETS

    config = SDXLLoraTrainConfig()
    assert SDXL_LORA.adapter_targets(config, "unet") == SDXL_UNET_TARGETS
    every = config.replace(lora_layers="all")
    assert SDXL_LORA.adapter_targets(every, "unet") == SDXL_UNET_TARGETS + CONV_AND_LINEAR_LAYERS
    assert SDXL_LORA.adapter_targets(every, "text_encoder_2") == TEXT_TARGETS
    with pytest.raises(UserError, match="add_embedding: mindone's SDXL pipeline cannot sample"):
        SDXL_LORA.adapter_targets(config.replace(lora_layers="to_q,linear_1"), "unet")


def test_chapter_09s_every_layer_recipe_changes_only_its_settings_and_folders():
    """`python -m dreambooth_nb.sdxl.compare --recipe every-layer`: chapter 08's run on both toys with
    config.EVERY_LAYER_LORA's settings, in folders of its own."""
    from dreambooth_nb.common.config import EVERY_LAYER_LORA
    from dreambooth_nb.sdxl.compare import seed_configs

    reference, every = seed_configs(1), seed_configs(1, "every-layer")
    for name, config in every.items():
        assert config.output_dir != reference[name].output_dir and config.seed == 1
        assert config == reference[name].replace(output_dir=config.output_dir, **EVERY_LAYER_LORA)


@pytest.mark.parametrize("flag, said", [
    ("--dataset_name=someone/photos", "datasets library"), ("--caption_column=text", "datasets library"),
    ("--optimizer=prodigy", "Prodigy is a PyTorch package"), ("--use_dora", "no DoRA"),
    ("--use_8bit_adam", "not supported"), ("--allow_tf32", "not supported"),
])
def test_flags_that_cannot_work_stop_before_any_work(flag, said, tmp_path, capsys):
    assert cli.main([flag, f"--output_dir={tmp_path / 'out'}"]) == 2
    assert said in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_edm_with_min_snr_is_refused_like_the_reference(tmp_path, capsys):
    assert cli.main(["--do_edm_style_training", "--snr_gamma=5", f"--output_dir={tmp_path}"]) == 2
    assert "--snr_gamma cannot be used with --do_edm_style_training" in capsys.readouterr().err


@pytest.mark.slow
def test_edm_style_training_runs_and_matches_the_plain_objective_for_epsilon_models(tiny_xl, tmp_path):
    """With an epsilon model, (x0 error)^2 / sigma^2 equals the noise error^2: the two objectives give one loss."""
    from dreambooth_nb.sdxl.model import load_sdxl_components
    from dreambooth_nb.sdxl.training import train_sdxl_lora

    plain = train_sdxl_lora(sdxl_test_config(tmp_path / "plain", tiny_xl, max_train_steps=2), load_sdxl_components(tiny_xl),
                            progress=False)
    edm = train_sdxl_lora(sdxl_test_config(tmp_path / "edm", tiny_xl, max_train_steps=2, do_edm_style_training=True),
                          load_sdxl_components(tiny_xl), progress=False)
    np.testing.assert_allclose(edm.losses(), plain.losses(), rtol=2e-3)


@pytest.mark.slow
def test_the_sdxl_loop_compiled_as_one_graph_draws_the_pipelines_pictures(tiny_xl):
    """generate() runs SDXL's denoising loop as one graph too (pooled vector and time ids passed in); the pictures
    are mindone's StableDiffusionXLPipeline's own, guided and unguided, to 8-bit rounding."""
    from dreambooth_nb import sampling
    from dreambooth_nb.sdxl.model import load_sdxl_pipeline

    pipe = load_sdxl_pipeline(tiny_xl)
    assert sampling.loop_table(pipe, 3) is not None
    prompts, seeds = ["a photo of sks dog", "a dog on the beach"], [4, 5]
    for guidance in (5.0, 1.0):
        ours = sampling.generate(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=guidance, batch_size=2,
                                 size=32)
        theirs = pipe(prompts, num_inference_steps=3, guidance_scale=guidance, height=32, width=32, output_type="pil",
                      generator=[np.random.default_rng(s) for s in seeds])[0]
        for a, b in zip(ours, theirs):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_the_sdxl_twin_of_a_lora_run_keeps_every_shared_setting():
    """sdxl_config_of (chapter 09, the panels' SDXL switch) moves a LoRA run to the toy SDXL: model, class images,
    32 px and folder change, every other shared setting stays; chapter 09's run is chapter 08's recipe."""
    from dataclasses import fields

    from dreambooth_nb.common.config import LoraTrainConfig, lora_config, sdxl_config_of, sdxl_lora_config

    lora = lora_config(seed=3, lora_rank=8, prior_loss_weight=0.5)
    xl = sdxl_config_of(lora)
    changed = {"pretrained_model_name_or_path", "class_data_dir", "resolution", "output_dir"}
    for f in fields(LoraTrainConfig):
        if f.name not in changed:
            assert getattr(xl, f.name) == getattr(lora, f.name), f.name
    assert xl.pretrained_model_name_or_path == "toy-world-xl" and xl.resolution == 32
    assert xl.class_data_dir != lora.class_data_dir and xl.output_dir.endswith("xl")
    chapter = sdxl_lora_config()
    assert (chapter.learning_rate, chapter.lora_rank, chapter.max_train_steps) == (
        lora_config().learning_rate, lora_config().lora_rank, lora_config().max_train_steps)
    assert xl.validate() is xl


def test_the_panels_sdxl_switch_trains_the_same_settings_on_the_toy_sdxl():
    from dreambooth_nb.common.config import LoraTrainConfig
    from dreambooth_nb.sdxl.panels import sdxl_panels

    train, generate = sdxl_panels()
    assert train.family.value == "SDXL" and generate.family.value == "SDXL"
    train.set("seed", 7)
    train.set("lora_layers", "all")  # the every-layer adapters of chapter 09's committed comparison
    run = train.run_config()
    assert isinstance(run, SDXLLoraTrainConfig) and run.seed == 7 and run.pretrained_model_name_or_path == "toy-world-xl"
    assert run.lora_layers == "all"
    train.family.value = "SD"
    run = train.run_config()
    assert type(run) is LoraTrainConfig and run.seed == 7 and run.pretrained_model_name_or_path == "toy-world"


def test_conditioned_gives_the_unet_the_asked_time_ids_and_then_the_pipelines_own():
    from dreambooth_nb.sdxl.model import conditioned

    class Pipe:
        def _get_add_time_ids(self, original_size, crops_coords_top_left, target_size, **kwargs):
            return (*original_size, *crops_coords_top_left, *target_size)

    pipe = Pipe()
    with conditioned(pipe, 16, (0, 8)):
        assert pipe._get_add_time_ids((32, 32), (0, 0), (32, 32), dtype=None) == (16, 16, 0, 8, 32, 32)
    assert pipe._get_add_time_ids((32, 32), (0, 0), (32, 32)) == (32, 32, 0, 0, 32, 32)

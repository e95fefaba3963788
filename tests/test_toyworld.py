"""The toy world: generator, tokenizer, committed weights and the judge."""

import json

import numpy as np
import pytest

from dreambooth_nb.toyworld import assets_dir, judge, scenes


def test_generator_is_deterministic_from_the_seed():
    a, captions_a, _ = scenes.dataset(24, seed=3)
    b, captions_b, _ = scenes.dataset(24, seed=3)
    c, _, _ = scenes.dataset(24, seed=4)
    np.testing.assert_array_equal(a, b)
    assert captions_a == captions_b
    assert not np.array_equal(a, c)
    assert a.shape == (24, scenes.SIZE, scenes.SIZE, 3) and a.dtype == np.uint8


def test_captions_say_what_is_drawn():
    images, captions, made = scenes.dataset(60, seed=5)
    for image, caption, scene in zip(images, captions, made):
        assert f"{scene.colour} {scene.shape}" in caption
        assert scene.background != scene.colour
        centre = image[int(round(scene.y)), int(round(scene.x))].astype(int)
        assert np.abs(centre - scenes.COLOURS[scene.colour]).max() <= 30, caption
        corner = np.abs(image[0, 0].astype(int) - scenes.BACKGROUNDS[scene.background]).max()
        edge = np.abs(image[:, 0].astype(int) - scenes.BACKGROUNDS[scene.background]).max(1).min()
        assert min(corner, edge) <= 30, caption
        assert (" on " in caption) == scene.say_background


def test_prompt_uses_the_right_article():
    assert scenes.prompt("red", "star") == "a photo of a red star"
    assert scenes.prompt("orange", "heart", background="blue") == "a photo of an orange heart on a blue background"


def test_subject_is_not_in_the_pretraining_data():
    assert all(not s.pattern for s in scenes.scenes(500, seed=0))
    assert all(s.pattern == scenes.SUBJECT["pattern"] for s in scenes.subject_scenes(5))


def test_tokenizer_knows_every_toy_word_as_one_token():
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(assets_dir() / "model" / "tokenizer"))
    for word in scenes.WORDS:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    longest = scenes.prompt("orange", "triangle", "small", "yellow")
    assert len(tokenizer(longest).input_ids) <= tokenizer.model_max_length


def test_committed_weights_are_small_safetensors_in_diffusers_layout():
    folder = assets_dir() / "model"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    files = list(folder.rglob("*.safetensors"))
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) < 10 * 2**20
    assert (assets_dir() / "MODEL_CARD.md").is_file()


def test_committed_weights_load_offline(monkeypatch):
    from safetensors.numpy import load_file

    from dreambooth_nb import models, runtime

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runtime.setup(device="CPU", show=False)
    components = models.load_components("toy-world")
    saved = load_file(assets_dir() / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = {p.name: p.asnumpy() for p in components.unet.get_parameters()}
    np.testing.assert_array_equal(loaded["conv_in.weight"], saved["conv_in.weight"])
    assert components.unet.config.sample_size * 2 == scenes.SIZE


def test_judge_names_shape_and_colour_of_fresh_pictures():
    scores = judge.accuracy(judge.load_judge(), n=300, seed=2024)
    assert scores["shape"] >= 0.9 and scores["colour"] >= 0.9, scores


def test_judge_says_no_object_on_a_blank_picture():
    blank = np.full((scenes.SIZE, scenes.SIZE, 3), 128, np.uint8)
    j = judge.load_judge()
    assert j.shapes([blank]) == ["none"] and j.colours([blank]) == ["none"]


def test_subject_views_are_closer_to_the_subject_than_other_pictures():
    references = scenes.subject_images(5)
    others, _, _ = scenes.dataset(20, seed=8)
    more_views = scenes.subject_images(5, seed=77)
    assert judge.similarity(more_views, references) > 0.95
    assert judge.similarity(others, references) < 0.85


def test_score_text_has_one_aligned_row_per_model():
    from dreambooth_nb.toyworld.experiments import SCORE_COLUMNS, score_text

    scores = {c: 0.5 for c in SCORE_COLUMNS} | {"class colours": 3}
    lines = score_text({"no prior": scores, "with prior": scores}).splitlines()
    assert len(lines) == 3 and lines[1].startswith("no prior") and lines[2].split()[-3:] == ["3", "0.50", "0.50"]
    assert len({len(line) for line in lines}) == 1


def test_model_card_tells_every_run_of_a_continued_pretraining():
    from dreambooth_nb.toyworld import pretrain

    first = dict(args=vars(pretrain.parse_args(["--out", "outputs/toyworld"])), vae_loss=0.03, unet_loss=0.02,
                 scaling_factor=0.3, wall_s=60.0, cpu_s=100.0, stage_s={"vae": 600.0, "unet": 1200.0})
    second_args = pretrain.parse_args(["--out", "outputs/toyworld-2", "--init_from", "outputs/toyworld/model",
                                       "--vae_steps", "0", "--snr_gamma", "5"])
    second = dict(args=vars(second_args), vae_loss=None, unet_loss=0.01, scaling_factor=0.3, wall_s=60.0, cpu_s=100.0,
                  stage_s={"unet": 1800.0}, started_from=first)
    card = pretrain.model_card(second)
    assert "### Run 1: from scratch" in card and "### Run 2: continued from run 1" in card
    assert "VAE: kept as it was" in card and "Min-SNR weighting (gamma 5.0)" in card
    assert "60 min of wall time in all" in card
    commands = [line for line in card.splitlines() if line.startswith("python -m dreambooth_nb.toyworld.pretrain")]
    assert commands[0].startswith("python -m dreambooth_nb.toyworld.pretrain --out outputs/toyworld --images")
    assert "--init_from=outputs/toyworld/model" in commands[1] and commands[1].endswith("--install")


def test_init_from_a_folder_without_a_model_says_what_to_give(tmp_path):
    from dreambooth_nb.toyworld import pretrain

    with pytest.raises(FileNotFoundError, match="diffusers layout"):
        pretrain.load_networks(tmp_path)

"""The toy world: generator, captions, subject photos, tokenizer, committed weights, and the judge on ground truth."""

import json
from dataclasses import replace

import numpy as np
import pytest

from dreambooth_nb.common import scenes
from dreambooth_nb.common.assets import toy_world_dir
from dreambooth_nb.common import judge


def test_generator_is_deterministic_from_the_seed():
    a, captions_a, _ = scenes.dataset(24, seed=3)
    b, captions_b, _ = scenes.dataset(24, seed=3)
    c, _, _ = scenes.dataset(24, seed=4)
    np.testing.assert_array_equal(a, b)
    assert captions_a == captions_b
    assert not np.array_equal(a, c)
    assert a.shape == (24, scenes.SIZE, scenes.SIZE, 3) and a.dtype == np.uint8


def test_captions_say_what_is_drawn():
    images, captions, made = scenes.dataset(200, seed=5)
    for image, caption, scene in zip(images, captions, made):
        assert caption.endswith(scene.shape) or f"{scene.shape} " in caption
        if scene.name:  # a named thing: its name instead of the colour, its own colour and shape
            assert f"{scene.name} {scene.shape}" in caption and scenes.named_things()[scene.name] == (scene.colour, scene.shape)
        else:
            assert (f"{scene.colour} {scene.shape}" in caption) == scene.say_colour
        assert (" background" in caption) == scene.say_background
        assert scene.background != scene.colour
        centre = image[int(round(scene.y)), int(round(scene.x))].astype(int)
        assert np.abs(centre - scenes.COLOURS[scene.colour]).max() <= 40, caption
        corner = min(np.abs(image[y, x].astype(int) - scenes.BACKGROUNDS[scene.background]).max()
                     for y, x in ((0, 0), (0, -1), (-1, 0), (-1, -1)))
        assert corner <= 30, caption
        if scene.place:
            assert scenes.PLACES[scene.place] in caption
        if scene.size_word:
            low, high = (scenes.PLACED_RADII if scene.place else scenes.RADII)[scene.size_word]
            assert low <= scene.radius <= high and f" {scene.size_word} " in caption


def test_every_attribute_is_sometimes_said_and_sometimes_not():
    made = scenes.scenes(2000, seed=1)
    for rate, said in ((scenes.SAY["colour"], [s.say_colour for s in made]),
                       (scenes.SAY["background"], [s.say_background for s in made])):
        assert abs(np.mean(said) - rate) < 0.05
    assert 0.25 < np.mean([bool(s.size_word) for s in made]) < 0.75
    assert 0.4 < np.mean([bool(s.place) for s in made]) < 0.6, "place in about half of the captions"
    placed = [s for s in made if s.place]
    assert {s.size_word for s in placed} == {"", "small", "big"}, "place with any size"


def test_rare_names_are_a_few_percent_of_captions_and_sks_the_rarest():
    _, captions, made = scenes.dataset(4000, seed=3)
    named = [s for s in made if s.name]
    assert 0.025 < len(named) / len(made) < 0.055
    counts = {n: sum(s.name == n for s in named) for n in scenes.NAMES}
    assert 0 < counts[scenes.IDENTIFIER] < min(v for n, v in counts.items() if n != scenes.IDENTIFIER) + 5
    assert scenes.IDENTIFIER in scenes.VOCABULARY and not any(s.name for s in scenes.scenes(500, seed=0))


def test_prompts_read_naturally():
    assert scenes.prompt("red", "star") == "a photo of a red star"
    assert scenes.prompt("", "star") == "a photo of a star" == scenes.SUBJECT_CLASS_PROMPT
    assert scenes.prompt("sks", "star") == "a photo of sks star" == scenes.SUBJECT_PROMPT
    assert scenes.prompt("sks", "star", "small") == "a photo of a small sks star"
    assert scenes.prompt("orange", "heart", background="blue") == "a photo of an orange heart on a blue background"
    assert scenes.prompt("", "circle", place="top") == "a photo of a circle at the top"


def test_subject_is_not_in_the_pretraining_data():
    assert all(not s.pattern for s in scenes.scenes(500, seed=0))
    assert all(s.pattern == scenes.SUBJECT["pattern"] for s in scenes.subject_scenes(5))


def test_subject_photos_vary_like_casual_photos_and_leave_new_contexts_for_later():
    from dreambooth_nb.common import judge

    photos = scenes.subject_scenes(5)
    assert len({s.background for s in photos}) == 5
    assert np.ptp([s.radius for s in photos]) > 0.6 and np.ptp([s.angle for s in photos]) > 0.2
    assert max(abs(s.x - 16) + abs(s.y - 16) for s in photos) > 4, "some off-centre"
    assert not {"red", "orange"} & {s.background for s in photos}, "new backgrounds stay new"
    verdicts = judge.load_judge().read(scenes.subject_images(5))
    assert all(v.is_subject for v in verdicts)
    assert not any(v.size == "small" or {"left", "top"} & set(v.places) for v in verdicts), "small, left, top stay new"


def test_the_tokenizer_writer_makes_every_toy_word_one_token(tmp_path):
    from dreambooth_nb.common.tiny_model import write_tokenizer

    tokenizer = write_tokenizer(tmp_path, scenes.VOCABULARY, 20)
    for word in scenes.VOCABULARY:
        assert tokenizer.tokenize(word) == [f"{word}</w>"], word
    _, captions, _ = scenes.dataset(3000, seed=4)
    assert max(len(tokenizer(c).input_ids) for c in captions) <= 20, "no caption over the limit"


def test_the_committed_tokenizer_reads_every_toy_word_and_every_caption_fits():
    """The committed model keeps the tokenizer it was trained with: 'triangle' and 'bottom' take several tokens in
    it (written before the writer above was fixed), every other word and `sks` one; each word is told apart. So a
    triangle with a place and a background runs past the 20 tokens: 2 % of its training captions lost their last
    words, and 4 % of today's (which name the place more often, at any size)."""
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(toy_world_dir() / "model" / "tokenizer"))
    pieces = {word: tuple(tokenizer.tokenize(word)) for word in scenes.WORDS}
    assert len(set(pieces.values())) == len(pieces), "every word its own tokens"
    assert all(tokenizer.convert_tokens_to_string(list(p)) == w for w, p in pieces.items())
    assert {w for w, p in pieces.items() if len(p) > 1} <= {"triangle", "bottom"}
    assert pieces[scenes.IDENTIFIER] == (f"{scenes.IDENTIFIER}</w>",)
    captions = scenes.captions(2000, seed=0)
    too_long = [c for c in captions if len(tokenizer(c).input_ids) > tokenizer.model_max_length]
    assert len(too_long) <= 0.05 * len(captions) and all("triangle" in c for c in too_long)


def test_committed_weights_are_small_safetensors_in_diffusers_layout():
    folder = toy_world_dir() / "model"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    files = list(folder.rglob("*.safetensors"))
    assert len(files) == 3
    assert sum(f.stat().st_size for f in files) < 20 * 2**20
    assert (toy_world_dir() / "MODEL_CARD.md").is_file()


def test_committed_weights_load_offline(monkeypatch):
    from safetensors.numpy import load_file

    from dreambooth_nb import models
    from dreambooth_nb.common import runtime

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runtime.setup(device="CPU", show=False)
    components = models.load_components("toy-world")
    saved = load_file(toy_world_dir() / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = {p.name: p.asnumpy() for p in components.unet.get_parameters()}
    np.testing.assert_array_equal(loaded["conv_in.weight"], saved["conv_in.weight"])
    assert models.model_resolution(components) == scenes.SIZE


def test_judge_reads_every_attribute_of_fresh_pictures():
    """At least 98 % right on ground-truth renders, for every attribute a caption can name (issue target)."""
    scores = judge.accuracy(judge.load_judge(), n=600, seed=2024)
    assert set(scores) == {"shape", "colour", "background", "size", "place", "pattern", "subject"}
    assert min(scores.values()) >= 0.98, scores


def test_judge_tells_the_subject_from_plain_stars():
    j = judge.load_judge()
    plain = [scenes.draw(replace(s, pattern="")) for s in scenes.subject_scenes(5)]
    yellow = [scenes.draw(replace(s, colour="yellow", pattern="")) for s in scenes.subject_scenes(5)]
    assert all(v.is_subject for v in j.read(scenes.subject_images(5)))
    assert not any(v.is_subject for v in j.read(plain + yellow))


def test_judge_says_no_object_on_a_blank_picture():
    blank = np.full((scenes.SIZE, scenes.SIZE, 3), 128, np.uint8)
    j = judge.load_judge()
    assert j.shapes([blank]) == ["none"] and j.colours([blank]) == ["none"]
    assert j.read([blank])[0].background == "gray"


def test_subject_views_are_closer_to_the_subject_than_other_pictures():
    references = scenes.subject_images(5)
    others, _, _ = scenes.dataset(20, seed=8)
    more_views = scenes.subject_images(5, seed=77)
    assert judge.similarity(more_views, references) > judge.similarity(others, references) + 0.1


# ------------------------------------------------------------------ the scores of chapter 06, checked on ground truth
from dreambooth_nb.toyworld import evaluate  # noqa: E402


def test_new_contexts_are_prompts_the_subject_photos_never_show():
    prompts = evaluate.subject_prompts()
    assert prompts["subject"] == scenes.SUBJECT_PROMPT
    assert prompts["small"] == "a photo of a small sks star"
    assert prompts["on a red background"] == "a photo of sks star on a red background"
    photos = scenes.subject_scenes(5)
    seen = judge.load_judge().read(scenes.subject_images(5))
    for context in evaluate.NEW_CONTEXTS.values():
        assert not any(context.get("background") == p.background for p in photos)
        assert not any(context.get("size_word") and v.size == context["size_word"] for v in seen)
        assert not any(context.get("place") in v.places for v in seen)


def test_a_correct_drawing_of_each_asked_context_scores_as_kept_and_right():
    """The recontext score counts a picture as a success exactly when it is the subject in the asked context."""
    j = judge.load_judge()
    for label, context in evaluate.NEW_CONTEXTS.items():
        asked = evaluate.subject_scene(**context)
        verdict = j.read([scenes.draw(asked)])[0]
        assert verdict.agrees(asked) == {k: True for k in verdict.agrees(asked)}, label
        assert set(verdict.agrees(asked)) >= {"shape", "subject"}
        plain = j.read([scenes.draw(replace(asked, pattern="", colour="red" if context.get("background") != "red" else "blue"))])[0]
        assert not plain.agrees(asked)["subject"], label


def test_class_scores_count_stripes_as_drift_and_measure_colour_diversity():
    j = judge.load_judge()
    stars = [scenes.draw(s) for s in scenes.scenes(30, seed=5, shape="star")]
    subject = scenes.subject_images(10)
    clean = evaluate.class_scores(j.read(stars))
    assert clean["class kept"] == 1.0 and clean["class drift"] == 0.0
    assert 2.0 < clean["class colours (bits)"] <= np.log2(len(scenes.COLOURS)) + 1e-9
    drifted = evaluate.class_scores(j.read(stars[:10] + subject))
    assert drifted["class drift"] == 0.5 and drifted["class kept"] == 0.5
    one_colour = evaluate.class_scores(j.read([scenes.draw(replace(s, colour="red", background="white"))
                                                for s in scenes.scenes(8, seed=2, shape="star")]))
    assert one_colour["class colours (bits)"] == 0.0


def test_spread_is_mean_and_sample_standard_deviation_over_seeds():
    spreads = evaluate.over_seeds([{"a": 0.5, "images": []}, {"a": 0.7}, {"a": 0.9}])
    assert set(spreads) == {"a"}
    assert spreads["a"].mean == pytest.approx(0.7) and spreads["a"].sd == pytest.approx(0.2)
    assert str(spreads["a"]) == "70 ± 20 %"
    assert evaluate.Spread((2.5, 2.5)).text(percent=False) == "2.50 ± 0.00"


def test_readme_shows_the_committed_experiment_results():
    """The README's toy-world tables are the committed outputs of `python -m dreambooth_nb.toyworld.experiments`,
    chapter 06's recipe and the sweep's best (`--recipe`)."""
    from pathlib import Path

    from dreambooth_nb.common.assets import results_dir
    from dreambooth_nb.toyworld.experiments import BOTH, CHAPTER_RECIPE, committed_table, results_name

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    for recipe in (CHAPTER_RECIPE, BOTH):
        for line in str(committed_table(recipe=recipe)).splitlines():
            assert line in readme, line
    assert (results_dir() / "sweep.png").is_file() and (results_dir() / "experiments.png").is_file()
    assert (results_dir() / f"{results_name(BOTH)}.png").is_file()


def test_the_recipe_sweep_reports_each_recipe_and_step_over_seeds():
    from dreambooth_nb.toyworld.experiments import MAIN_SCORES, Sweep

    def run(fidelity):
        return {**{k: 0.5 for k in MAIN_SCORES}, "subject fidelity": fidelity, "images": {}}

    result = Sweep({"a": {150: [run(0.2), run(0.4)], 300: [run(0.6), run(0.8)]}, "b": {150: [run(0.0), run(0.0)],
                                                                                         300: [run(1.0), run(1.0)]}})
    rows = {(r[0], r[1]): r[2:4] for r in result.table().rows()}
    assert rows == {("a", 150): (2, "30 ± 14 %"), ("a", 300): (2, "70 ± 14 %"), ("b", 150): (2, "0 ± 0 %"),
                    ("b", 300): (2, "100 ± 0 %")}
    result.cells["b"] = {150: [run(0.5)], 300: []}  # an interrupted sweep: one seed so far, a step not yet scored
    assert [r[:4] for r in result.table().rows() if r[0] == "b"] == [("b", 150, 1, "50 ± 0 %")]
    assert result.to_json()["cells"]["a"]["300"][1]["subject fidelity"] == 0.8


def test_the_base_models_table_says_which_target_is_met():
    spreads = {"shape": evaluate.Spread((0.9, 0.96)), "colour": evaluate.Spread((1.0, 0.98)),
               "background follows": evaluate.Spread((0.9, 0.9)), "unscored": evaluate.Spread((0.1, 0.2))}
    verdicts = evaluate.base_target_verdicts(spreads)
    assert verdicts == {"shape": ">= 95 %: not met", "colour": ">= 95 %: met", "background follows": ">= 90 %: met"}
    rows = {row[0]: row[-1] for row in evaluate.Scores({"judge agrees": spreads}, targets=verdicts).rows()}
    assert rows["shape"] == ">= 95 %: not met" and rows["unscored"] == ""


def test_the_table_says_which_target_is_met_and_which_is_not():
    from dreambooth_nb.toyworld.experiments import Experiments

    def run(fidelity, kept, drift, bits):
        return {"subject fidelity": fidelity, "new contexts: subject kept": kept, "new contexts: context right": 0.9,
                "class kept": kept, "class drift": drift, "class colours (bits)": bits}

    runs = {"base model": [run(0.0, 0.9, 0.0, 2.0)] * 2,
            "no prior": [run(0.9, 0.2, 0.8, 1.0), run(0.9, 0.2, 0.6, 1.0)],
            "with prior": [run(0.9, 0.6, 0.1, 2.1), run(0.8, 0.6, 0.3, 2.1)]}
    rows = {row[0]: row[-1] for row in Experiments(runs).table().rows()}
    assert rows["subject fidelity"] == "with prior >= 80 %: met"  # mean 0.85
    assert rows["new contexts: subject kept"] == "with prior >= 70 %: not met"  # mean 0.60
    assert rows["class colours (bits)"] == "with prior >= base: met"
    assert rows["class drift"] == "no prior > with prior, beyond the spread: met"  # 0.70 - 0.14 > 0.20 + 0.14
    runs["no prior"][1] = run(0.9, 0.2, 0.2, 1.0)  # drift 0.5 ± 0.42: not apart from 0.2 ± 0.14
    rows = {row[0]: row[-1] for row in Experiments(runs).table().rows()}
    assert rows["class drift"] == "no prior > with prior, beyond the spread: not met"


# ------------------------------------------------------------------------------ the shipped model lets the words choose
IDENTIFIER_MARGIN = 0.2  # relative encoder distance, sks star vs a star (the SD-v1-schedule model: 0.025; a colour word: 0.64)


@pytest.fixture(scope="module")
def shipped_pipe():
    from dreambooth_nb.common import runtime
    from dreambooth_nb.infer import load_pipeline

    runtime.setup(device="CPU", show=False)
    return load_pipeline(str(toy_world_dir() / "model"))


def test_one_seed_two_background_words_give_the_two_backgrounds(shipped_pipe):
    """The starting noise does not choose the background (it did under SD v1's schedule): the word does."""
    from dreambooth_nb.sampling import generate

    asked = ("blue", "yellow")
    prompts = [scenes.prompt("red", "circle", background=b) for b in asked]
    pictures = generate(shipped_pipe, prompts, [7, 7], batch_size=2)
    assert [v.background for v in judge.load_judge().read(pictures)] == list(asked)


def test_a_starting_noise_shifted_toward_blue_leaves_the_asked_background(shipped_pipe):
    """Under SD v1's schedule this shift (what its last timestep keeps of a blue picture) turned every background
    blue; at zero terminal SNR the noise's mean carries nothing, and the words still choose."""
    from dreambooth_nb.sampling import background_probe

    probe = background_probe(shipped_pipe, words=("yellow", "green"), seeds=(3,), shift_toward="blue")
    assert probe.got == [["yellow", "green"]], probe


def test_the_identifier_moves_the_text_encoders_output(shipped_pipe):
    """`a photo of sks star` differs from `a photo of a star` in the text encoder (the rare names in pretraining)."""
    measured = evaluate.identifier_distance(shipped_pipe.tokenizer, shipped_pipe.text_encoder)
    assert measured["identifier distance"] > IDENTIFIER_MARGIN, measured


def test_captions_without_pictures_are_the_datasets_own_names_included():
    _, with_pictures, _ = scenes.dataset(300, seed=5)
    assert scenes.captions(300, seed=5) == with_pictures
    assert scenes.captions(300, seed=5, named=0.0) == [s.caption() for s in scenes.scenes(300, seed=5)]


def test_a_recipe_changes_only_what_it_names_and_writes_to_its_own_folders():
    from dreambooth_nb.common.config import toy_dreambooth_config
    from dreambooth_nb.toyworld.experiments import BOTH, run_dir, with_recipe

    config = toy_dreambooth_config(False)
    changed = with_recipe(config, BOTH)
    assert changed.train_text_encoder and not config.train_text_encoder
    assert changed.replace(train_text_encoder=False) == config  # without the prior there are no class images to judge
    assert not with_recipe(config, BOTH, train_text_encoder=False).train_text_encoder  # the caller's word wins
    with pytest.raises(KeyError, match="choose one of"):
        with_recipe(config, "lr 1e-3")
    assert run_dir("with prior", 0) != run_dir("with prior", 0, BOTH)


def test_the_sweep_leaves_out_the_combined_recipe_and_refuses_a_recipe_of_its_own(capsys):
    from dreambooth_nb.toyworld.experiments import AFTER_SWEEP, BOTH, RECIPES, SWEEP_RECIPES, main

    assert BOTH in AFTER_SWEEP and not set(AFTER_SWEEP) & set(SWEEP_RECIPES)
    assert set(SWEEP_RECIPES) | set(AFTER_SWEEP) == set(RECIPES)
    with pytest.raises(SystemExit):
        main(["--sweep", "--recipe", BOTH])
    assert "--sweep trains every recipe" in capsys.readouterr().err


def test_a_sweep_run_trained_on_another_base_model_is_not_taken_as_finished(tmp_path):
    """The sweep skips runs it finished before; one trained from another model's class images is trained again."""
    import json

    from dreambooth_nb.common.config import toy_dreambooth_config
    from dreambooth_nb.toyworld.experiments import finished_run

    config = toy_dreambooth_config(True, output_dir=str(tmp_path), max_train_steps=600)
    (tmp_path / "checkpoint-600").mkdir()
    saved = {"max_train_steps": 600, "class_data_dir": config.class_data_dir}
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert finished_run(config)
    assert not finished_run(config.replace(max_train_steps=800))
    (tmp_path / "train_config.json").write_text(json.dumps({**saved, "class_data_dir": "class-star-toy-world-0ld"}))
    assert not finished_run(config)


def test_a_checkpoint_is_judged_once_and_its_scores_and_pictures_read_back(tmp_path, monkeypatch):
    """A sweep run again after an interruption reads each judged checkpoint's scores and pictures from its folder."""
    from PIL import Image

    from dreambooth_nb import infer
    from dreambooth_nb.toyworld import experiments

    judged, swapped = [], []
    pictures = {"subject": [Image.new("RGB", (32, 32), (200, 10, 10))] * 2, "class": [Image.new("RGB", (32, 32))]}
    monkeypatch.setattr(infer, "swap_weights", lambda pipe, folder: swapped.append(folder))
    monkeypatch.setattr(experiments, "toy_dreambooth_scores",
                        lambda pipe, seed: judged.append(seed) or {"subject fidelity": 0.25, "images": pictures,
                                                                   "verdicts": ["not saved"]})
    first = experiments.checkpoint_scores("pipe", tmp_path, seed=3)
    again = experiments.checkpoint_scores("pipe", tmp_path, seed=3)
    assert judged == [3] and swapped == [tmp_path]  # the second call judged nothing
    assert again["subject fidelity"] == first["subject fidelity"] == 0.25 and "verdicts" not in again
    assert [np.asarray(im).tolist() for im in again["images"]["subject"]] == [np.asarray(im).tolist() for im in pictures["subject"]]
    assert len(again["images"]["class"]) == 1


def test_the_judged_pictures_advance_a_bar_batch_by_batch_with_the_same_seeds(monkeypatch):
    """evaluate.sample draws in batches of batch_size, seed after seed, and says each batch on the bar it is given."""
    from dreambooth_nb import sampling
    from dreambooth_nb.toyworld import evaluate

    calls = []
    monkeypatch.setattr(sampling, "generate", lambda pipe, prompts, seeds, **kw: calls.append((prompts, seeds, kw))
                        or [f"{p}@{s}" for p, s in zip(prompts, seeds)])

    class Bar:
        done = 0

        def update(self, n):
            self.done += n

    bar = Bar()
    prompts = [f"p{i}" for i in range(19)]
    images = evaluate.sample("pipe", prompts, seed=100, batch_size=8, bar=bar)
    assert images == [f"p{i}@{100 + i}" for i in range(19)] and bar.done == 19
    assert [len(p) for p, _, _ in calls] == [8, 8, 3] and all(kw["batch_size"] == 8 for _, _, kw in calls)

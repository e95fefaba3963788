"""Chapter 03 helpers: resumable class-image generation and the prior-preservation loss terms."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_nb import batches, data, guide_data, prior, sampling
from dreambooth_nb.common import config as config_mod
from dreambooth_nb.common import defaults


class FakePipe:
    """Stands in for a StableDiffusionPipeline; sampling.generate is patched in these tests."""

    def set_progress_bar_config(self, **kwargs):
        pass


def picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8))


@pytest.fixture
def calls(monkeypatch):
    """Patch sampling.generate: one picture per seed; record each call's seeds; interrupt on request."""
    log = {"seeds": [], "interrupt_on_call": None}

    def generate(pipe, prompts, seeds, num_inference_steps=25, batch_size=4, **kwargs):
        log["seeds"].append(list(seeds))
        assert len(prompts) == len(seeds) <= batch_size
        if log["interrupt_on_call"] == len(log["seeds"]):
            raise KeyboardInterrupt
        return [picture(s) for s in seeds]

    monkeypatch.setattr(sampling, "generate", generate)
    monkeypatch.setattr(prior, "ensure_setup", lambda: None)
    return log


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_interrupted_generation_resumes_without_redoing_work(tmp_path, calls):
    folder = tmp_path / "class"
    calls["interrupt_on_call"] = 2
    with pytest.raises(KeyboardInterrupt):
        prior.generate_class_images(FakePipe(), folder, "a photo of a dog", 7, batch_size=3, seed=10, progress=False)
    first = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert len(first) == 3, "the first batch is kept"
    assert all(prior.CLASS_NAME.match(name) for name in first), "no temporary or broken file is left"
    assert all(data.load_rgb(folder / name).size == (8, 8) for name in first)

    calls["interrupt_on_call"] = None
    written = prior.generate_class_images(FakePipe(), folder, "a photo of a dog", 7, batch_size=3, seed=10,
                                          progress=False)
    assert len(written) == 4 and len(names(folder)) == 7
    assert {name: (folder / name).read_bytes() for name in first} == first, "earlier files are kept as they were"
    indices = sorted(int(prior.CLASS_NAME.match(n).group(1)) for n in names(folder))
    assert indices == list(range(7))
    assert calls["seeds"][2:] == [[13, 14, 15], [16]], "seeds 10-12 are not made again"
    assert prior.generate_class_images(FakePipe(), folder, "a photo of a dog", 7, progress=False) == []


def test_names_hold_the_index_and_a_content_hash(tmp_path, calls):
    folder = tmp_path / "class"
    paths = prior.generate_class_images(FakePipe(), folder, "p", 2, batch_size=2, seed=0, progress=False)
    assert [p.name for p in paths] == [prior.content_name(picture(0), 0), prior.content_name(picture(1), 1)]
    assert prior.content_name(picture(0), 0) != prior.content_name(picture(1), 0)
    assert all(np.array_equal(np.asarray(data.load_rgb(p)), np.asarray(picture(i))) for i, p in enumerate(paths))


def test_missing_indices_are_filled_in_and_other_images_count(tmp_path, calls):
    folder = tmp_path / "class"
    folder.mkdir()
    for index in (0, 2):
        picture(index).save(folder / prior.content_name(picture(index), index))
    picture(99).save(folder / "my-own-dog.jpg")
    (folder / "readme.txt").write_text("not an image")
    assert prior.missing_class_images(folder, 5) == 2
    assert prior.indices_to_make(folder, 5) == [1, 3]
    prior.generate_class_images(FakePipe(), folder, "p", 5, batch_size=4, seed=0, progress=False)
    assert calls["seeds"] == [[1, 3]], "only the missing indices (generate pads the batch)"
    assert len(data.list_images(folder)) == 5


def test_a_deleted_image_is_made_again_even_when_the_folder_holds_more_than_asked(tmp_path, calls):
    """A folder a longer run filled (6 images), one of the first 3 deleted: asking for 3 makes that one again, so
    training on 3 uses images 0, 1, 2 as before, not 0, 2, 3."""
    folder = tmp_path / "class"
    prior.generate_class_images(FakePipe(), folder, "p", 6, batch_size=2, seed=0, progress=False)
    before = names(folder)
    (folder / before[1]).unlink()
    assert prior.indices_to_make(folder, 3) == [1] and prior.indices_to_make(folder, 6) == [1]
    calls["seeds"].clear()
    prior.generate_class_images(FakePipe(), folder, "p", 3, batch_size=2, seed=0, progress=False)
    assert calls["seeds"] == [[1]] and names(folder) == before


def test_stale_temporary_files_are_removed(tmp_path, calls):
    folder = tmp_path / "class"
    folder.mkdir()
    (folder / ".class-0000-deadbeef.tmp123.png").write_bytes(b"half an image")
    prior.generate_class_images(FakePipe(), folder, "p", 1, batch_size=1, progress=False)
    assert len(names(folder)) == 1 and prior.CLASS_NAME.match(names(folder)[0])


def test_fast_profile_uses_few_inference_steps(monkeypatch):
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "1")
    assert defaults.inference_steps() == defaults.FAST_INFERENCE_STEPS < defaults.INFERENCE_STEPS
    monkeypatch.setenv("DREAMBOOTH_NB_FAST", "0")
    assert defaults.inference_steps() == defaults.INFERENCE_STEPS


def test_ensure_class_images_fills_the_config_folder_once(tmp_path, calls, monkeypatch, capsys):
    monkeypatch.setattr(sampling, "pipeline_from_components", lambda components, scheduler: FakePipe())
    config = config_mod.subject_config(class_data_dir=str(tmp_path / "cls"), num_class_images=3, sample_batch_size=2, seed=5)
    assert prior.ensure_class_images(config, components=None) == tmp_path / "cls"
    assert len(data.list_images(tmp_path / "cls")) == 3 and calls["seeds"] == [[5, 6], [7]]
    assert "making 3 more" in capsys.readouterr().out
    prior.ensure_class_images(config, components=None)
    assert len(calls["seeds"]) == 2, "nothing is generated when the folder is full"
    assert len(prior.class_images(config)) == 3


def test_loss_terms_add_up_and_need_a_prior_batch():
    terms = prior.LossTerms(instance=0.5, prior=0.25, prior_loss_weight=2.0, trainer_total=1.0)
    assert terms.total == 1.0 and "prior term" in str(terms) and "<table>" in terms._repr_html_()
    config = config_mod.subject_config(with_prior=False)
    arrays = [np.zeros((2, 1))] * 6
    batch = batches.Batch(*arrays, prompts=["p", "p"], halves=["instance", "instance"])
    with pytest.raises(ValueError, match="with_prior_preservation=True"):
        prior.prior_loss_terms(config, None, batch)


@pytest.mark.slow
def test_class_images_and_loss_terms_with_the_tiny_model(tmp_path):
    """Real compiled generation, then the trainer's loss split into its instance and prior terms."""
    import mindspore as ms

    from dreambooth_nb import models
    from dreambooth_nb.common import runtime

    runtime.ensure_setup()
    config = config_mod.subject_config(pretrained_model_name_or_path="tiny-random", class_data_dir=str(tmp_path / "cls"),
                                num_class_images=2, sample_batch_size=2)
    components = models.load_components(config.pretrained_model_name_or_path)
    prior.ensure_class_images(config, components, progress=False)
    assert ms.get_context("mode") == ms.GRAPH_MODE
    paths = data.list_images(tmp_path / "cls")
    assert [prior.CLASS_NAME.match(p.name).group(1) for p in paths] == ["0000", "0001"]
    assert all(data.load_rgb(p).size == (64, 64) for p in paths)
    batch = prior.training_batch(config, components)
    terms = prior.prior_loss_terms(config, components, batch)
    assert terms.instance > 0 and terms.prior > 0
    np.testing.assert_allclose(terms.total, terms.trainer_total, rtol=1e-4)
    # the reference script's dataset (photos 32 px, resized to the model's 64) holds each row of the trainer's batch
    match = guide_data.match_batch(guide_data.guide_dataset(config, components.tokenizer), batch)
    assert match.largest_difference < 1e-6 and all(same for *_, same in match.rows_found)
    assert [half for _, half, *_ in match.rows_found] == batch.halves


def test_the_reference_collate_puts_every_instance_row_before_every_class_row():
    def example(k):
        return {f"{h}_{part}": np.full((1, 3) if part != "images" else (3, 2, 2), v, np.float32)
                for h, v in (("instance", k), ("class", -k)) for part in ("images", "prompt_ids", "attention_mask")}

    pixels, ids, mask = guide_data.collate_fn([example(1), example(2)], with_prior_preservation=True)
    assert pixels.shape == (4, 3, 2, 2) and ids.shape == (4, 3) and mask.shape == (4, 3)
    assert list(pixels[:, 0, 0, 0]) == [1, 2, -1, -2] and list(ids[:, 0]) == [1, 2, -1, -2]
    assert guide_data.collate_fn([example(1)])[0].shape == (1, 3, 2, 2)


def test_interrupt_while_a_file_is_written_leaves_no_temporary_file(tmp_path, calls, monkeypatch):
    real_save = Image.Image.save

    def save_then_interrupt(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if isinstance(fp, (str, Path)):  # the temporary file is on disk now
            raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        prior.generate_class_images(FakePipe(), tmp_path / "class", "p", 2, batch_size=2, progress=False)
    assert names(tmp_path / "class") == []


def test_half_precision_class_images_are_refused_on_cpu_with_one_line(capsys):
    with prior.generation_precision(components=None, precision="fp16"):
        pass
    said = capsys.readouterr().err.strip()
    assert said.count("\n") == 0 and "--prior_generation_precision=fp16" in said and "fp32 on CPU" in said
    with prior.generation_precision(components=None, precision=None):
        pass
    assert capsys.readouterr().err == ""

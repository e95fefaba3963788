"""Chapter 02 helpers: loading components offline, the text encoder check, tokens, VAE and noise schedule."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreambooth_nb import models
from dreambooth_nb.common import runtime
from dreambooth_nb.common import tiny_model
from dreambooth_nb.common import hub
from dreambooth_nb.common import assets


@pytest.fixture(scope="module")
def tiny() -> Path:
    runtime.ensure_setup()  # setup() must come before MindSpore's first kernel
    return assets.tiny_model_path()


@pytest.fixture(scope="module")
def components(tiny):
    return models.load_components(str(tiny))


def fake_model(root: Path, architecture: str | None, vae: bool = True) -> Path:
    """A folder that looks like a diffusers model to the config readers (no weights)."""
    (root / "unet").mkdir(parents=True)
    (root / "text_encoder").mkdir()
    config = {"architectures": [architecture]} if architecture else {}
    (root / "text_encoder" / "config.json").write_text(json.dumps(config))
    if vae:
        (root / "vae").mkdir()
        (root / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    return root


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks the hub."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError("the hub was asked although the model is local")

    monkeypatch.setattr(huggingface_hub, "file_exists", refuse)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", refuse)


def test_unsupported_text_encoder_is_a_clear_error(tmp_path, no_hub):
    model = fake_model(tmp_path / "t5-model", "T5EncoderModel")
    with pytest.raises(ValueError, match=r"t5-model uses a T5EncoderModel text encoder.*CLIPTextModel"):
        models.text_encoder_class(str(model))


def test_clip_text_encoders_are_picked_from_the_config(tmp_path, no_hub):
    projection = fake_model(tmp_path / "a", "CLIPTextModelWithProjection")
    assert models.text_encoder_class(str(projection)).__name__ == "CLIPTextModelWithProjection"
    unnamed = fake_model(tmp_path / "b", None)
    assert models.text_encoder_class(str(unnamed)).__name__ == "CLIPTextModel"


def test_load_components_refuses_a_non_clip_model(tmp_path, tiny):
    copy = Path(shutil.copytree(tiny, tmp_path / "copy"))
    config_path = copy / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "architectures": ["T5EncoderModel"]}))
    with pytest.raises(ValueError, match="T5EncoderModel"):
        models.load_components(str(copy))


def test_model_has_vae_reads_a_local_folder_without_the_hub(tmp_path, no_hub):
    assert models.model_has_vae(str(fake_model(tmp_path / "with", "CLIPTextModel", vae=True))) is True
    assert models.model_has_vae(str(fake_model(tmp_path / "without", "CLIPTextModel", vae=False))) is False
    assert assets.read_subfolder_config(str(tmp_path / "without"), "vae") is None


def test_load_components_from_a_folder_without_vae(tmp_path, tiny):
    copy = Path(shutil.copytree(tiny, tmp_path / "pixels"))
    shutil.rmtree(copy / "vae")
    loaded = models.load_components(str(copy))
    assert loaded.vae is None and loaded.unet is not None
    assert set(loaded.parameter_counts()) == {"text_encoder", "unet"}
    with pytest.raises(ValueError, match="has no VAE"):
        models.vae_round_trip(loaded, Image.new("RGB", (64, 64)))


def test_parameter_counts_add_up(components):
    counts = components.parameter_counts()
    unet = sum(int(np.prod(p.shape)) for p in components.unet.get_parameters())
    assert counts["unet"] == unet and counts["unet"] > counts["vae"] > counts["text_encoder"] > 0


def test_same_weights_compares_every_parameter_by_value(components, tiny):
    again = models.load_components(str(tiny))
    assert models.same_weights(again.unet, components.unet)
    assert not models.same_weights(again.unet, components.vae)
    weight = next(iter(again.unet.get_parameters()))
    weight.set_data(weight + 1)
    assert not models.same_weights(again.unet, components.unet)


def test_prompt_tokens_show_the_identifier_in_pieces(components):
    table = models.prompt_tokens(components.tokenizer, "a photo of sks dog")
    assert table.tokens[0] == "<|startoftext|>" and table.tokens[-1] == "<|endoftext|>"
    assert table.tokens[1:4] == ["a</w>", "photo</w>", "of</w>"] and table.tokens[-2] == "dog</w>"
    assert len(table.tokens) - 6 > 1, "sks should split into several pieces in the tiny vocabulary"
    assert "".join(table.tokens[4:-2]).replace("</w>", "") == "sks"
    ids = models.tokenize(components.tokenizer, "a photo of sks dog")[0]
    assert list(ids[: len(table.ids)]) == table.ids and table.padded_length == len(ids) == 77
    assert "sks" in str(table) and "<table>" in table._repr_html_()


def test_model_resolution_of_the_tiny_model(components):
    assert models.model_resolution(components) == tiny_model.TINY_RESOLUTION == 64


def test_noised_versions_follow_the_schedule(components):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8))
    clean, mid, last = models.noised_versions(components, image, [0, 500, 999], seed=1)
    assert clean.size == mid.size == (64, 64)
    x = np.asarray(image.resize((80, 64)).crop((8, 0, 72, 64)), dtype=np.float64)
    a = models.alphas_cumprod(components.noise_scheduler)
    assert a[0] > 0.99 and a[-1] < 0.01 and np.all(np.diff(a) < 0)
    corr = [np.corrcoef(x.ravel(), np.asarray(im, dtype=np.float64).ravel())[0, 1] for im in (clean, mid, last)]
    assert corr[0] > 0.95 > corr[1] > corr[2] and abs(corr[2]) < 0.2
    again = models.noised_versions(components, image, [500], seed=1)[0]
    assert np.array_equal(np.asarray(again), np.asarray(mid))


def test_noise_schedule_plot(components):
    import matplotlib.pyplot as plt

    fig = models.plot_noise_schedule(components.noise_scheduler)
    lines = fig.axes[0].get_lines()
    assert len(lines) == 3 and len(lines[0].get_ydata()) == 1000
    plt.close(fig)


@pytest.mark.slow
def test_vae_round_trip_and_text_encoder_run_compiled(components):
    import mindspore as ms

    assert ms.get_context("mode") == ms.GRAPH_MODE
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (96, 128, 3), dtype=np.uint8))
    trip = models.vae_round_trip(components, image)
    assert trip.image.size == (64, 64) and trip.reconstruction.size == (64, 64)
    assert trip.latents.shape == (4, 32, 32) and np.isfinite(trip.latents).all()
    pictures, titles = trip.panels()
    assert len(pictures) == len(titles) == 6 and titles[-1] == "decoded"
    assert all(0.0 <= p.min() and p.max() <= 1.0 for p in pictures[1:5])
    import matplotlib.pyplot as plt

    plt.close(trip.show())
    assert models.encode_prompt(components, "a photo of sks dog").shape == (1, 77, 32)


def test_identifier_report_reads_tokens_counts_and_neighbours(components):
    captions = ["a photo of a dog", "a photo of a cat", "a dog on the beach"]
    report = models.inspect_identifier(components, "sks", captions=captions)
    assert report.tokens == components.tokenizer.tokenize("sks") and len(report.tokens) > 1  # pieces in the tiny vocabulary
    assert report.seen_in_training == 0 and len(report.nearest) == 5 and "sks" not in report.nearest
    assert models.inspect_identifier(components, "dog", captions=captions).seen_in_training == 2
    assert "one token?" in str(report) and "<table>" in report._repr_html_()
    assert models.inspect_identifier(components, "dog").seen_in_training is None


def test_sd_v1_keeps_the_background_in_the_noisiest_latent_and_zero_terminal_snr_keeps_nothing():
    """last_timestep: under SD v1's schedule two pictures that differ only in background are still told apart by
    their channel means at t = 999 (beyond the spread of the noise's own mean); at zero terminal SNR they are not."""
    toy = models.load_components("toy-world")
    ends = models.last_timestep(toy, {"sd": models.noise_scheduler("sd"), "zero": models.noise_scheduler("zero-snr")}).ends
    assert abs(ends["sd"]["kept"] - 0.068) < 0.001 and abs(ends["sd"]["snr"] - 0.0047) < 0.0001
    assert ends["sd"]["gap"] > 1.5 * ends["sd"]["spread"]
    assert ends["zero"]["kept"] < 1e-3 and ends["zero"]["gap"] < 1e-3 * ends["zero"]["spread"]
    assert ends["zero"]["prediction"] == "v_prediction"

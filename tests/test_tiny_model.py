"""The embedded tiny Stable Diffusion: deterministic build, diffusers layout, reload, sampling."""

import json
from pathlib import Path

import numpy as np
import pytest

from dreambooth_nb import models
from dreambooth_nb.common import runtime
from dreambooth_nb import sampling
from dreambooth_nb.common import tiny_model
from dreambooth_nb.common import assets


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    runtime.setup(device="CPU", show=False)
    first = tiny_model.build_tiny_pipeline(tmp_path_factory.mktemp("a") / "tiny")
    second = tiny_model.build_tiny_pipeline(tmp_path_factory.mktemp("b") / "tiny")
    return first, second


def test_saved_in_diffusers_layout_with_safetensors(built):
    folder, _ = built
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (folder / part).is_dir(), part
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (folder / "text_encoder" / "model.safetensors").is_file()
    assert not list(folder.parent.glob(".tiny-*")), "staging folder left behind"


def test_build_is_deterministic_from_the_seed(built):
    from safetensors.numpy import load_file

    a, b = built
    for part in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        ta, tb = load_file(a / part), load_file(b / part)
        assert ta.keys() == tb.keys()
        for key in ta:
            np.testing.assert_array_equal(ta[key], tb[key], err_msg=f"{part}:{key}")


def test_reloads_with_from_pretrained_with_the_same_weights(built):
    from safetensors.numpy import load_file

    folder, _ = built
    components = models.load_components(str(folder))
    saved = load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")
    loaded = {p.name: p.asnumpy() for p in components.unet.get_parameters()}
    key = "conv_in.weight"
    np.testing.assert_array_equal(saved[key], loaded[key])
    counts = components.parameter_counts()
    assert set(counts) == {"text_encoder", "vae", "unet"} and all(n > 1000 for n in counts.values())


def test_tokenizer_has_whole_words_and_splits_the_identifier(built):
    folder, _ = built
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(folder / "tokenizer"))
    assert tok.tokenize("a photo of dog") == ["a</w>", "photo</w>", "of</w>", "dog</w>"]
    assert len(tok.tokenize("sks")) > 1
    assert tok.model_max_length == 77


def test_resolve_model_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no unet/"):
        assets.resolve_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        assets.resolve_model(str(tmp_path / "missing"))
    assert assets.resolve_model("someone/some-model") == "someone/some-model"


@pytest.mark.slow
def test_sampling_is_compiled_and_reproducible(built):
    from dreambooth_nb import infer

    pipe = infer.load_pipeline(str(built[0]))
    a = sampling.generate(pipe, ["a photo of sks dog"], [5], num_inference_steps=3)
    b = sampling.generate(pipe, ["a photo of sks dog"], [5], num_inference_steps=3)
    assert a[0].size == (64, 64)
    np.testing.assert_array_equal(np.asarray(a[0]), np.asarray(b[0]))

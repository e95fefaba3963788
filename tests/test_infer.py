"""Chapter 05 helpers: loading what training saved, and the before/after comparison."""

import numpy as np
import pytest

import dreambooth_nb as db
from dreambooth_nb import infer, runtime
from dreambooth_nb.train import engine


@pytest.fixture(scope="module")
def components():
    runtime.setup(device="CPU", show=False)
    return db.load_components()


def test_model_saved_without_text_encoder_loads_the_base_one(components, tmp_path):
    config = db.TrainConfig(output_dir=str(tmp_path / "out"), skip_save_text_encoder=True)
    out = engine.save_pipeline(components, config, tmp_path / "out")
    assert (out / "unet").is_dir() and not (out / "text_encoder").exists()
    pipe = infer.load_pipeline(str(out))
    base = dict(components.text_encoder.parameters_and_names())
    for name, param in pipe.text_encoder.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), base[name].asnumpy(), err_msg=name)


def test_trained_model_keeps_an_existing_model(components, tmp_path, monkeypatch):
    out = engine.save_pipeline(components, db.TrainConfig(), tmp_path / "model")
    monkeypatch.setattr("dreambooth_nb.train.train_dreambooth", lambda *a, **k: pytest.fail("trained again"))
    assert infer.trained_model(out, progress=False) == out


@pytest.mark.slow
def test_compare_models_uses_the_same_prompts_and_seeds(tmp_path):
    pipe = infer.load_pipeline("tiny-random")
    prompts = ["a photo of sks person", "a painting of sks person on the beach"]
    comparison = infer.compare_models(pipe, pipe, prompts, seeds=[3, 4], num_inference_steps=2)
    assert comparison.seeds == [3, 4] and len(comparison.before) == len(comparison.after) == 2
    for before, after in zip(comparison.before, comparison.after):  # same model: same pictures
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    assert not np.array_equal(np.asarray(comparison.before[0]), np.asarray(comparison.before[1]))
    grid = comparison.save(tmp_path)
    assert grid.name == "before_after.png" and len(list(tmp_path.glob("*.png"))) == 5
    width, height = comparison.before[0].size
    assert comparison.grid().size[0] > 2 * width and comparison.grid().size[1] > 2 * height

"""Chapter 05 helpers: loading what training saved, and the before/after comparison."""

import numpy as np
import pytest

import dreambooth_nb as db
from dreambooth_nb import infer
from dreambooth_nb.common import runtime
from dreambooth_nb.train import engine
from dreambooth_nb import sampling
from dreambooth_nb.common.errors import InputError


@pytest.fixture(scope="module")
def components():
    runtime.setup(device="CPU", show=False)
    return db.load_components()


def test_model_saved_without_text_encoder_loads_the_base_one(components, tmp_path):
    config = db.TrainConfig(output_dir=str(tmp_path / "out"), skip_save_text_encoder=True)
    out = sampling.save_pipeline(components, tmp_path / "out", config, skip_text_encoder=True)
    assert (out / "unet").is_dir() and not (out / "text_encoder").exists()
    pipe = infer.load_pipeline(str(out))
    base = dict(components.text_encoder.parameters_and_names())
    for name, param in pipe.text_encoder.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), base[name].asnumpy(), err_msg=name)


def test_swapping_in_a_unet_only_run_brings_back_the_base_text_encoder(components, tmp_path):
    """A run that trained only the UNet saved no text encoder: swap_weights takes its base model's, not whatever
    text encoder an earlier swap left in the pipeline."""
    import mindspore as ms

    config = db.TrainConfig(output_dir=str(tmp_path / "unet-only"), skip_save_text_encoder=True)
    unet_only = sampling.save_pipeline(components, tmp_path / "unet-only", config, skip_text_encoder=True)
    pipe = infer.load_pipeline(str(unet_only))
    base = {name: p.asnumpy().copy() for name, p in pipe.text_encoder.parameters_and_names()}
    for _, param in pipe.text_encoder.parameters_and_names():  # as if a text-encoder run had been swapped in
        param.set_data(ms.Tensor(param.asnumpy() * 2, dtype=param.dtype))
    assert infer.swap_weights(pipe, unet_only) == ["unet", "text_encoder"]
    for name, param in pipe.text_encoder.parameters_and_names():
        np.testing.assert_array_equal(param.asnumpy(), base[name], err_msg=name)


def test_trained_model_keeps_an_existing_model(components, tmp_path, monkeypatch):
    out = sampling.save_pipeline(components, tmp_path / "model", db.TrainConfig())
    monkeypatch.setattr("dreambooth_nb.train.train_dreambooth", lambda *a, **k: pytest.fail("trained again"))
    assert infer.trained_model(out, progress=False) == out


@pytest.fixture(scope="module")
def tiny_pipe():
    runtime.setup(device="CPU", show=False)
    return infer.load_pipeline("tiny-random")


@pytest.mark.slow
def test_compare_models_uses_the_same_prompts_and_seeds(tiny_pipe, tmp_path):
    """(The module's one pipeline, at the step count and batch of the loop tests below: one compiled loop for all.)"""
    pipe = sampling.with_scheduler(tiny_pipe, "DPMSolverMultistepScheduler")
    prompts = ["a photo of sks person", "a painting of sks person on the beach"]
    comparison = infer.compare_models(pipe, pipe, prompts, seeds=[3, 4], num_inference_steps=3, guidance_scale=5.0,
                                      batch_size=2)
    assert comparison.seeds == [3, 4] and len(comparison.before) == len(comparison.after) == 2
    for before, after in zip(comparison.before, comparison.after):  # same model: same pictures
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))
    assert not np.array_equal(np.asarray(comparison.before[0]), np.asarray(comparison.before[1]))
    grid = comparison.save(tmp_path)
    assert grid.name == "before_after.png" and len(list(tmp_path.glob("*.png"))) == 5
    width, height = comparison.before[0].size
    assert comparison.grid().size[0] > 2 * width and comparison.grid().size[1] > 2 * height


@pytest.mark.slow
def test_compare_models_in_one_pipeline_swaps_each_models_weights_in(tiny_pipe, tmp_path):
    """pipe=: both models drawn by one pipeline (one compiled sampler), the base's weights first, the tuned's after."""
    import mindspore as ms

    pipe = sampling.with_scheduler(tiny_pipe, "DPMSolverMultistepScheduler")
    settings = dict(num_inference_steps=3, guidance_scale=5.0, batch_size=2)  # the module's one compiled loop
    prompts = ["a photo of sks person", "a painting of sks person on the beach"]
    tuned_parts = db.load_components("tiny-random")
    for _, param in tuned_parts.unet.parameters_and_names():  # a "fine-tuned" model: every UNet weight moved
        param.set_data(ms.Tensor(param.asnumpy() * 1.2, dtype=param.dtype))
    tuned = sampling.save_pipeline(tuned_parts, tmp_path / "tuned", db.TrainConfig(pretrained_model_name_or_path="tiny-random"))
    base_pictures = db.generate(pipe, prompts, [3, 4], **settings)
    comparison = infer.compare_models("tiny-random", tuned, prompts, seeds=[3, 4], pipe=pipe, **settings)
    for drawn, expected in zip(comparison.before, base_pictures):
        np.testing.assert_array_equal(np.asarray(drawn), np.asarray(expected))
    assert all(db.mean_difference(b, a) > 1 for b, a in zip(comparison.before, comparison.after))
    saved = dict(tuned_parts.unet.parameters_and_names())
    for name, param in pipe.unet.parameters_and_names():  # the pipeline ends holding the tuned weights
        np.testing.assert_array_equal(param.asnumpy(), saved[name].asnumpy(), err_msg=name)
    infer.swap_weights(pipe, db.resolve_model("tiny-random"))  # the module's other tests draw the base model
    with pytest.raises(InputError, match="model names or folders"):
        infer.compare_models(pipe, tuned, prompts, pipe=pipe)


def test_generate_gives_the_pipeline_batches_of_one_size_and_keeps_each_seeds_picture():
    """One batch shape per pipeline: one compiled sampler, and a picture that does not depend on its companions."""
    from PIL import Image

    class Recorder:
        unet = type("U", (), {"config": type("C", (), {"sample_size": 4})()})()
        vae_scale_factor = 2
        calls = []

        def __call__(self, prompts, generator, **kwargs):
            self.calls.append(len(prompts))
            assert len(generator) == len(prompts)
            seeds_drawn = [int(g.integers(0, 255)) for g in generator]
            return ([Image.new("RGB", (8, 8), (v, 0, 0)) for v in seeds_drawn],)

    pipe = Recorder()
    images = sampling.generate(pipe, ["a", "b", "c", "d", "e"], seeds=[10, 11, 12, 13, 14], batch_size=4)
    alone = sampling.generate(pipe, ["e"], seeds=[14], batch_size=4)
    assert pipe.calls == [4, 4, 4] and len(images) == 5 and len(alone) == 1
    expected = [int(np.random.default_rng(s).integers(0, 255)) for s in (10, 11, 12, 13, 14)]
    assert [im.getpixel((0, 0))[0] for im in images] == expected
    assert alone[0].getpixel((0, 0)) == images[4].getpixel((0, 0))


@pytest.mark.slow
def test_the_loop_written_out_draws_the_pipelines_picture(components):
    """sample_by_hand (encode, seeded noise, guided steps, decode) gives generate()'s picture for the same seed."""
    pipe = sampling.sampling_pipeline(components)
    by_hand, kept = sampling.sample_by_hand(pipe, "a photo of a dog", seed=3, num_inference_steps=6,
                                            guidance_scale=5.0, keep_every=2)
    by_pipeline = sampling.generate(pipe, ["a photo of a dog"], [3], num_inference_steps=6, guidance_scale=5.0,
                                    batch_size=1)[0]
    difference = np.abs(np.asarray(by_hand, np.int16) - np.asarray(by_pipeline, np.int16))
    assert difference.max() <= 2, difference.max()  # 8-bit rounding of float-level differences
    assert [step for step, _ in kept] == [0, 2, 4]


def pipeline_pictures(pipe, prompts, seeds, steps, guidance):
    """What mindone's own pipeline draws for these prompts and seeds (generate's generators)."""
    return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="pil",
                generator=[np.random.default_rng(s) for s in seeds])[0]


@pytest.mark.slow
@pytest.mark.parametrize("scheduler, guidance", [("DPMSolverMultistepScheduler", 5.0), ("PNDMScheduler", 5.0),
                                                 ("DDIMScheduler", 1.0), ("EulerDiscreteScheduler", 5.0)])
def test_the_loop_compiled_as_one_graph_draws_the_pipelines_pictures(tiny_pipe, scheduler, guidance):
    """generate() runs the denoising loop as one graph from the sampler's table; the pictures are the pipeline's own
    (to 8-bit rounding), guided or not (mindone turns guidance off at scale <= 1, and so does the loop)."""
    pipe = sampling.with_scheduler(tiny_pipe, scheduler)
    assert sampling.loop_table(pipe, 3) is not None
    prompts, seeds = ["a photo of sks dog", "a dog on the beach"], [4, 5]
    ours = sampling.generate(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=guidance, batch_size=2)
    theirs = pipeline_pictures(pipe, prompts, seeds, 3, guidance)
    for a, b in zip(ours, theirs):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


@pytest.mark.slow
def test_one_compiled_loop_serves_every_step_count(tiny_pipe):
    """The loop's graph has room for up to LOOP_CAPACITY calls and is told how many to run: another step count
    compiles nothing and still draws the pipeline's pictures."""
    pipe = sampling.with_scheduler(tiny_pipe, "DPMSolverMultistepScheduler")
    prompts, seeds = ["a photo of sks dog", "a dog on the beach"], [4, 5]
    sampling.generate(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=5.0, batch_size=2)
    graphs = len(sampling.sampling_loop(pipe.unet).compile_cache)
    ours = sampling.generate(pipe, prompts, seeds, num_inference_steps=7, guidance_scale=5.0, batch_size=2)
    assert len(sampling.sampling_loop(pipe.unet).compile_cache) == graphs
    for a, b in zip(ours, pipeline_pictures(pipe, prompts, seeds, 7, 5.0)):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1


def test_the_table_padded_to_the_loops_capacity_keeps_its_rows():
    table = sampling.LoopTable(np.arange(16, dtype=np.float32).reshape(4, 4), np.array([1, 2, 3], np.float32),
                               np.array([900, 500, 100], np.float32))
    weights, scales, timesteps = sampling.padded_table(table)
    capacity = sampling.LOOP_CAPACITY
    assert weights.shape == (capacity + 1, capacity + 1) and scales.shape == timesteps.shape == (capacity,)
    np.testing.assert_array_equal(weights[:3, :4], table.weights[:3])
    np.testing.assert_array_equal(weights[capacity, :4], table.weights[3])  # the final row, last
    assert not weights[3:capacity].any() and not weights[:, 4:].any()
    assert list(scales[:4]) == [1, 2, 3, 1] and list(timesteps[:4]) == [900, 500, 100, 0]
    assert sampling.loop_capacity(capacity + 1) == 2 * capacity


@pytest.mark.slow
def test_a_model_swapped_in_after_the_loop_compiled_draws_its_own_pictures(tiny_pipe, tmp_path):
    """swap_weights (like merge_adapters and a resume) writes into the weights' own memory, so the loop compiled for
    the model before draws the new one; Parameter.set_data would leave it drawing the old weights."""
    from dreambooth_nb.common.runtime import write_in_place
    from dreambooth_nb.models import load_components

    pipe = sampling.with_scheduler(tiny_pipe, "DPMSolverMultistepScheduler")
    prompts, seeds = ["a photo of sks dog", "a dog on the beach"], [4, 5]
    before = sampling.generate(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=5.0, batch_size=2)
    other = load_components("tiny-random")
    rng = np.random.default_rng(0)
    for _, param in other.unet.parameters_and_names():
        value = param.asnumpy()
        write_in_place(param, value + 0.5 * value.std() * rng.standard_normal(value.shape))
    sampling.save_pipeline(other, tmp_path / "other")
    infer.swap_weights(pipe, tmp_path / "other")
    try:
        after = sampling.generate(pipe, prompts, seeds, num_inference_steps=3, guidance_scale=5.0, batch_size=2)
        theirs = pipeline_pictures(pipe, prompts, seeds, 3, 5.0)  # the pipeline's own loop reads the weights as they are
    finally:
        infer.swap_weights(pipe, db.resolve_model("tiny-random"))
    for a, b, old in zip(after, theirs, before):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
        assert np.abs(np.asarray(a, np.int16) - np.asarray(old, np.int16)).mean() > 1


def test_a_sampler_that_is_not_a_fixed_weighted_sum_keeps_the_pipelines_loop(tiny_pipe):
    """A sampler that clips its prediction (DDIM with clip_sample) or draws noise (DDPM) is not one table: its check
    on random numbers fails and generate() lets the pipeline sample; DPM-Solver++'s table passes, row by row
    (row 0: the starting noise alone)."""
    import mindone.diffusers as diffusers

    config = tiny_pipe.scheduler.config
    clipping = diffusers.DDIMScheduler.from_config(config, clip_sample=True, clip_sample_range=0.5)
    assert sampling.read_loop_table(clipping, 4) is None
    assert sampling.read_loop_table(diffusers.DDPMScheduler.from_config(config), 4) is None
    table = sampling.read_loop_table(diffusers.DPMSolverMultistepScheduler.from_config(config), 4)
    assert table.weights.shape == (5, 5) and len(table.timesteps) == 4
    np.testing.assert_allclose(table.weights[0], [1, 0, 0, 0, 0])
    assert np.allclose(np.triu(table.weights, 1), 0)  # the latents of call i depend on predictions before i only


def test_guidance_moves_from_the_unconditional_prediction_toward_the_prompt():
    uncond, cond = np.array([1.0, 2.0]), np.array([3.0, 1.0])
    assert np.allclose(sampling.guide(uncond, cond, 0.0), uncond)
    assert np.allclose(sampling.guide(uncond, cond, 1.0), cond)
    assert np.allclose(sampling.guide(uncond, cond, 4.0), [9.0, -2.0])


def test_the_starting_noise_given_is_the_seeds_own_draw_and_one_is_needed_per_prompt():
    """starting_noise draws what the pipeline draws for a seed (so generate(latents=...) of it changes nothing), plus
    a shift per channel; a count that does not match the prompts is refused."""
    class Recorder:
        unet = type("U", (), {"config": type("C", (), {"sample_size": 4, "in_channels": 2})()})()
        vae_scale_factor = 2

    pipe = Recorder()
    noise = sampling.starting_noise(pipe, [5, 6], shift=[1.0, -2.0])
    own = np.concatenate([np.random.default_rng(s).standard_normal((1, 2, 4, 4)) for s in (5, 6)])
    assert noise.shape == (2, 2, 4, 4) and noise.dtype == np.float32
    np.testing.assert_allclose(noise - own, np.array([1.0, -2.0]).reshape(1, 2, 1, 1) + 0 * own, atol=1e-6)
    with pytest.raises(InputError, match="one per prompt"):
        sampling.generate(pipe, ["a", "b", "c"], seeds=[1, 2, 3], latents=noise)


def test_the_clean_picture_a_prediction_implies_undoes_the_forward_process_for_noise_and_v():
    """predicted_clean: from ε̂ or from v̂ (v-prediction), the clean latents come back exactly."""
    from types import SimpleNamespace

    from dreambooth_nb.models import add_noise

    rng = np.random.default_rng(0)
    x, eps, a = rng.standard_normal(8), rng.standard_normal(8), 0.3
    noisy = add_noise(x, eps, a)
    for kind, prediction in (("epsilon", eps), ("v_prediction", a ** 0.5 * eps - (1 - a) ** 0.5 * x)):
        pipe = SimpleNamespace(scheduler=SimpleNamespace(alphas_cumprod=[0.9, a], config=SimpleNamespace(prediction_type=kind)))
        np.testing.assert_allclose(sampling.predicted_clean(pipe, noisy, 1, prediction), x, rtol=1e-6, err_msg=kind)

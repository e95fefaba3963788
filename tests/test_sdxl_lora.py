"""Chapter 09's SDXL LoRA on the tiny random SDXL: UNet and both text encoders trained, saved, reloaded and resumed,
and the adapter file loaded by diffusers on PyTorch. It runs in the unit tests' half of the suite (tests/test_sdxl.py
runs after the notebooks), so that the two halves take about as long."""

import json
import textwrap

import numpy as np
import pytest

from conftest import sdxl_test_config
from test_lora_interop import needs_torch
from test_share import PIXEL_TOLERANCE, TORCH_PYTHON


@pytest.fixture(scope="module")
def xl_lora(tiny_xl, tmp_path_factory):
    """SDXL LoRA on every convolution and linear layer of the UNet (--lora_layers=all) and on both text encoders: a run
    that never stops (root/full, its TrainResult as `full`), and its checkpoint-2 resumed in the same networks
    (root/resumed: conftest's resumed_in_place_from_a_copy). One compiled step for both."""
    from conftest import resumed_in_place_from_a_copy
    from dreambooth_nb.sdxl.model import load_sdxl_components
    from dreambooth_nb.sdxl.training import train_sdxl_lora

    root = tmp_path_factory.mktemp("xl-lora")
    config = lambda folder: sdxl_test_config(root / folder, tiny_xl, train_text_encoder=True,  # noqa: E731
                                             lora_layers="all")
    components = load_sdxl_components(tiny_xl)
    full = train_sdxl_lora(config("full"), components, progress=False)
    resumed = resumed_in_place_from_a_copy(train_sdxl_lora, config("resumed"), components,
                                           root / "full" / "checkpoint-2")
    return dict(root=root, full=full, resumed=resumed)


@pytest.fixture(scope="module")
def xl_pictures(tiny_xl, xl_lora):
    """The same picture drawn by mindone's StableDiffusionXLPipeline without and with the full run's adapters (DDIM,
    3 steps, 64 px, fixed initial latents): {'given': the inputs, 'base': ..., 'tuned': ...}, float arrays in [0, 1]."""
    import mindspore as ms

    from dreambooth_nb.common.runtime import import_quietly
    from dreambooth_nb.lora import load_adapters
    from dreambooth_nb.sdxl.model import load_sdxl_pipeline

    rng = np.random.default_rng(0)
    given = {"latents": rng.standard_normal((1, 4, 8, 8)).astype(np.float32), "size": 64,
             "prompt": "a photo of sks dog", "steps": 3, "guidance": 4.0}

    def picture(pipe):
        pipe.scheduler = import_quietly("mindone.diffusers").DDIMScheduler.from_config(pipe.scheduler.config)
        return np.asarray(pipe(given["prompt"], num_inference_steps=given["steps"], guidance_scale=given["guidance"],
                               latents=ms.Tensor(given["latents"]), height=given["size"], width=given["size"],
                               output_type="np")[0])

    base = picture(load_sdxl_pipeline(tiny_xl))
    pipe = load_sdxl_pipeline(tiny_xl)
    load_adapters(pipe, xl_lora["root"] / "full")
    return {"given": given, "base": base, "tuned": picture(pipe)}


@pytest.mark.slow
def test_sdxl_lora_on_both_text_encoders_saves_reloads_and_resumes(xl_lora, xl_pictures):
    from safetensors.numpy import load_file

    root, full = xl_lora["root"], xl_lora["full"]
    state = load_file(str(root / "full" / "pytorch_lora_weights.safetensors"))
    prefixes = {k.split(".")[0] for k in state}
    assert prefixes == {"unet", "text_encoder", "text_encoder_2"} and all("lora" in k for k in state)
    assert any(".conv1.lora_A." in k for k in state) and any(".to_q.lora_A." in k for k in state)  # peft's names
    assert len(full.history) == 4 and all(r["instance_loss"] > 0 for r in full.history)
    assert xl_lora["resumed"].resumed_from.name == "checkpoint-2" and len(xl_lora["resumed"].history) == 4
    again = load_file(str(root / "resumed" / "pytorch_lora_weights.safetensors"))
    for key in state:
        np.testing.assert_array_equal(again[key], state[key], err_msg=key)
    # the reloaded adapters move the picture (255 x the mean difference of pixels in [0, 1])
    assert 255 * np.abs(xl_pictures["base"] - xl_pictures["tuned"]).mean() > 0.5
    assert json.loads((root / "full" / "train_config.json").read_text())["train_text_encoder"] is True


XL_TORCH_SIDE = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    base, adapters, inputs, result = sys.argv[1:5]
    given = np.load(inputs)
    pipe = StableDiffusionXLPipeline.from_pretrained(base)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size, out = int(given["size"]), {}

    def picture():
        with torch.no_grad():
            return pipe(str(given["prompt"]), num_inference_steps=int(given["steps"]),
                        guidance_scale=float(given["guidance"]), latents=torch.from_numpy(given["latents"]),
                        height=size, width=size, output_type="np").images

    out["base"] = picture()
    pipe.load_lora_weights(adapters, weight_name="pytorch_lora_weights.safetensors")  # as the SDXL run wrote it
    out["lora"] = picture()
    np.savez(result, **out)
""")


@pytest.mark.slow
@needs_torch
def test_diffusers_on_pytorch_loads_the_sdxl_adapter_file_to_the_same_picture(tiny_xl, xl_lora, xl_pictures):
    """The SDXL adapter file (UNet and both text encoders) loads as it is in diffusers' StableDiffusionXLPipeline on
    PyTorch and draws the picture mindone draws with it, to PIXEL_TOLERANCE; the adapters do move the picture."""
    import subprocess

    from dreambooth_nb.common import formats

    root, adapters, given = xl_lora["root"], xl_lora["root"] / "full", xl_pictures["given"]
    formats.to_diffusers_pt(tiny_xl, root / "base-pt")
    np.savez(root / "inputs.npz", **given)
    run = subprocess.run([str(TORCH_PYTHON), "-c", XL_TORCH_SIDE, str(root / "base-pt"), str(adapters),
                          str(root / "inputs.npz"), str(root / "torch.npz")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    torch_side = np.load(root / "torch.npz")
    base, tuned = xl_pictures["base"], xl_pictures["tuned"]
    assert np.abs(base - torch_side["base"]).max() <= PIXEL_TOLERANCE
    assert np.abs(tuned - torch_side["lora"]).max() <= PIXEL_TOLERANCE
    assert np.abs(tuned - base).max() > 10 * PIXEL_TOLERANCE  # the adapters change what both frameworks draw

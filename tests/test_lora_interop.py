"""LoRA adapters across frameworks: the file a LoRA run writes (mindone's save_lora_weights: diffusers key names,
safetensors tagged `format: np`) loads as it is in diffusers on PyTorch (through PEFT) and gives the same UNet output,
text encoder output and picture as mindone with the same adapters; an adapter file diffusers writes on PyTorch loads
back in mindone; the export command says that an adapter needs no conversion."""

from __future__ import annotations

import subprocess
import textwrap

import numpy as np
import pytest

from dreambooth_nb import export
from dreambooth_nb.common import assets, formats
from test_share import PIXEL_TOLERANCE, TORCH_PYTHON, UNET_TOLERANCE  # one venv path and one tolerance for both tests

TINY = "tiny-random"
EFFECT = 0.05  # the least the adapters must move the picture (max pixel change in [0, 1]): 50x the tolerance


def torch_side_missing() -> str:
    """Why the PyTorch side cannot run here ('' when it can): no venv, or no peft in it (diffusers' LoRA needs it)."""
    if not TORCH_PYTHON.exists():
        return f"no PyTorch environment at {TORCH_PYTHON} (make bench builds it)"
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('peft') is None)"
    if subprocess.run([str(TORCH_PYTHON), "-c", probe]).returncode:
        return f"no peft in {TORCH_PYTHON} (diffusers loads LoRA through it; make bench installs it)"
    return ""


TORCH_MISSING = torch_side_missing()
needs_torch = pytest.mark.skipif(bool(TORCH_MISSING), reason=TORCH_MISSING)

TORCH_SIDE = textwrap.dedent("""
    import sys
    import numpy as np, torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    base, adapters, inputs, result, resaved = sys.argv[1:6]
    given = np.load(inputs)
    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents, size, out = torch.from_numpy(given["latents"]), int(given["size"]), {}

    def run(tag):
        with torch.no_grad():
            out[tag + "_eps"] = pipe.unet(latents, torch.tensor([int(given["timestep"])]),
                                          encoder_hidden_states=torch.from_numpy(given["text"])).sample.numpy()
            out[tag + "_text"] = pipe.text_encoder(torch.from_numpy(given["ids"]).long())[0].numpy()
            out[tag + "_image"] = pipe(str(given["prompt"]), num_inference_steps=int(given["steps"]),
                                       guidance_scale=float(given["guidance"]), latents=latents, height=size,
                                       width=size, output_type="np").images

    run("base")
    pipe.load_lora_weights(adapters, weight_name="pytorch_lora_weights.safetensors")  # as the LoRA run wrote it
    run("lora")
    layers = {}
    for name in ("unet", "text_encoder"):
        state = get_peft_model_state_dict(getattr(pipe, name), adapter_name="default_0")
        out[name + "_loaded"] = len(state)
        layers[name] = convert_state_dict_to_diffusers(state)
    # saved as diffusers' own examples/dreambooth/train_dreambooth_lora.py saves on PyTorch
    StableDiffusionPipeline.save_lora_weights(resaved, unet_lora_layers=layers["unet"],
                                              text_encoder_lora_layers=layers["text_encoder"])
    np.savez(result, **out)
""")


@pytest.fixture(scope="module")
def lora_run(lora_runs, tmp_path_factory):
    """conftest's LoRA run (UNet and text encoder, lr 1e-2: visible adapters) as root/lora, and the base model
    exported for PyTorch by the command line as root/base-pt."""
    root = tmp_path_factory.mktemp("lora-interop")
    (root / "lora").symlink_to(lora_runs["root"] / "full", target_is_directory=True)
    assert export.main([str(assets.tiny_model_path()), "--to", "diffusers-pt", str(root / "base-pt")]) == 0
    return root


def fixed_inputs(root) -> dict:
    """Initial latents, a timestep, text embeddings, token ids and sampling settings, the same for both frameworks."""
    from transformers import CLIPTokenizer

    rng = np.random.default_rng(0)
    prompt = "a photo of sks dog"
    tokenizer = CLIPTokenizer.from_pretrained(str(assets.tiny_model_path() / "tokenizer"))
    ids = tokenizer(prompt, padding="max_length", return_tensors="np").input_ids
    given = {"latents": rng.standard_normal((1, 4, 16, 16)).astype(np.float32), "size": 32, "timestep": 500,
             "text": rng.standard_normal((1, 77, 32)).astype(np.float32), "ids": ids.astype(np.int32),
             "prompt": prompt, "steps": 4, "guidance": 4.0}
    np.savez(root / "inputs.npz", **given)
    return given


def mindspore_outputs(pipe, given: dict) -> dict:
    """UNet and text encoder outputs and a DDIM picture from a mindone pipeline on the given inputs."""
    import mindspore as ms

    from dreambooth_nb.common.runtime import import_quietly

    diffusers = import_quietly("mindone.diffusers")
    pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    latents, size = ms.Tensor(given["latents"]), given["size"]
    eps = pipe.unet(latents, ms.Tensor(np.array([given["timestep"]], np.int32)),
                    encoder_hidden_states=ms.Tensor(given["text"]))[0]
    image = pipe(given["prompt"], num_inference_steps=given["steps"], guidance_scale=given["guidance"],
                 latents=latents, height=size, width=size, output_type="np")[0]
    return {"eps": eps.asnumpy(), "text": pipe.text_encoder(ms.Tensor(given["ids"]))[0].asnumpy(),
            "image": np.asarray(image)}


def adapter_weights(pipe) -> dict:
    """The adapter parameters a mindone pipeline holds, by network and name."""
    return {f"{part}.{name}": p.asnumpy() for part in ("unet", "text_encoder")
            for name, p in getattr(pipe, part).parameters_and_names() if ".lora_" in name}


@pytest.fixture(scope="module")
def compared(lora_run):
    """The same inputs through both frameworks, base model and with the adapters: {'ms': ..., 'pt': ...}."""
    import dreambooth_nb as db
    from dreambooth_nb.lora import lora_pipeline

    given = fixed_inputs(lora_run)
    run = subprocess.run([str(TORCH_PYTHON), "-c", TORCH_SIDE, str(lora_run / "base-pt"), str(lora_run / "lora"),
                          str(lora_run / "inputs.npz"), str(lora_run / "torch.npz"), str(lora_run / "pt-saved")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    pipe = lora_pipeline(TINY, lora_run / "lora")  # a fresh pipeline, adapters loaded before its first compile
    ms = {**{f"base_{k}": v for k, v in mindspore_outputs(db.load_pipeline(TINY), given).items()},
          **{f"lora_{k}": v for k, v in mindspore_outputs(pipe, given).items()}}
    return {"ms": ms, "pt": dict(np.load(lora_run / "torch.npz")), "root": lora_run, "adapters": adapter_weights(pipe),
            "stderr": run.stderr}


def largest(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


@pytest.mark.slow
@needs_torch
def test_diffusers_on_pytorch_loads_every_adapter_weight_of_the_file_as_written(compared):
    from safetensors import safe_open

    with safe_open(str(compared["root"] / "lora" / formats.LORA_FILES[0]), framework="np") as f:
        keys, metadata = list(f.keys()), f.metadata()
    assert metadata.get("format") == "np", "mindone's own tag, read by diffusers as it is"
    for part in ("unet", "text_encoder"):
        in_file = sum(k.startswith(part + ".") for k in keys)
        assert in_file and int(compared["pt"][f"{part}_loaded"]) == in_file, part
    assert "unexpected keys" not in compared["stderr"]


@pytest.mark.slow
@needs_torch
def test_adapters_give_the_same_unet_output_text_and_picture_on_both_frameworks(compared):
    ms, pt = compared["ms"], compared["pt"]
    for tag in ("base", "lora"):
        unet, text = largest(pt[f"{tag}_eps"], ms[f"{tag}_eps"]), largest(pt[f"{tag}_text"], ms[f"{tag}_text"])
        pixels = largest(pt[f"{tag}_image"], ms[f"{tag}_image"])
        print(f"{tag}: UNet max |PyTorch - MindSpore| = {unet:.2e}, text encoder {text:.2e}, "
              f"DDIM picture (4 steps, guidance 4) {pixels:.2e}")
        assert unet <= UNET_TOLERANCE and text <= UNET_TOLERANCE and pixels <= PIXEL_TOLERANCE, tag


@pytest.mark.slow
@needs_torch
def test_the_adapters_change_the_picture_on_both_frameworks(compared):
    for side in ("ms", "pt"):
        out = compared[side]
        change = {what: largest(out[f"lora_{what}"], out[f"base_{what}"]) for what in ("eps", "text", "image")}
        print(f"{side}: adapters vs base, max change: UNet {change['eps']:.3f}, text encoder {change['text']:.3f}, "
              f"picture {change['image']:.3f}")
        assert change["image"] >= EFFECT and min(change["eps"], change["text"]) >= 100 * UNET_TOLERANCE


@pytest.mark.slow
@needs_torch
def test_an_adapter_file_diffusers_wrote_on_pytorch_loads_in_mindone_to_the_same_weights(compared):
    from dreambooth_nb.lora import lora_pipeline

    assert formats.read_weights(compared["root"] / "pt-saved" / formats.LORA_FILES[0])[1]["format"] == "pt"
    again = adapter_weights(lora_pipeline(TINY, compared["root"] / "pt-saved"))
    ours = compared["adapters"]
    assert ours and again.keys() == ours.keys()
    for name, value in ours.items():
        np.testing.assert_array_equal(again[name], value, err_msg=name)


def test_export_says_an_adapter_needs_no_conversion_in_one_line(tmp_path, capsys):
    from safetensors.numpy import save_file

    folder = tmp_path / "lora"
    folder.mkdir()
    adapter = np.zeros((2, 4), np.float32)
    save_file({"unet.mid_block.to_q.lora.down.weight": adapter}, str(folder / formats.LORA_FILES[0]))
    for source in (folder, folder / formats.LORA_FILES[0]):
        for to, dest in (("single-file", tmp_path / "x.safetensors"), ("diffusers-pt", tmp_path / "x")):
            assert export.main([str(source), "--to", to, str(dest)]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "LoRA adapter, already one file" in err and "load_lora_weights" in err
            assert not dest.exists()

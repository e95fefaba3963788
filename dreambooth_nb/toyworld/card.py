"""MODEL_CARD.md of the toy-world model: what it is, how it was trained, what it cost, how well it follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

from ..common import scenes


def reproduce_command(args: dict) -> str:
    """The command line of the pretraining run."""
    flags = " ".join(f"--{k}={v}" for k, v in args.items() if k not in ("out", "install") and v is not None)
    return f"python -m dreambooth_nb.toyworld.pretrain --out {args['out']} {flags} --install"


def read_config(model: Path, part: str) -> dict:
    return json.loads((model / part / "config.json").read_text(encoding="utf-8"))


def parameters(model: Path, part: str) -> int:
    """Weights in a network's safetensors file."""
    from safetensors.numpy import load_file

    return sum(int(v.size) for f in (model / part).glob("*.safetensors") for v in load_file(str(f)).values())


def architecture(model: Path) -> str:
    """The Model section's bullets, read from the saved configs and weights."""
    unet, vae, text = (read_config(model, p) for p in ("unet", "vae", "text_encoder"))
    attention = [2 ** i for i, kind in enumerate(unet["down_block_types"]) if kind.startswith("CrossAttn")]
    latent = unet["sample_size"]
    return "\n".join([
        f"- VAE (AutoencoderKL, {parameters(model, 'vae'):,} weights): {scenes.SIZE}x{scenes.SIZE}x3 pictures to "
        f"{latent}x{latent}x{vae['latent_channels']} latents, channels {tuple(vae['block_out_channels'])}, no "
        f"attention; scaling factor {vae['scaling_factor']:.4f} (1 / std of the latents).",
        f"- UNet2DConditionModel ({parameters(model, 'unet'):,} weights): channels {tuple(unet['block_out_channels'])}, "
        f"{unet['layers_per_block']} layer(s) per block, cross-attention at "
        f"{', '.join(f'{latent // k}x{latent // k}' for k in attention)}, {unet['cross_attention_dim']}-d text features.",
        f"- CLIPTextModel ({parameters(model, 'text_encoder'):,} weights): {text['num_hidden_layers']} layers, width "
        f"{text['hidden_size']}, {text['max_position_embeddings']} tokens; CLIPTokenizer with `sks` and every toy word as one token but "
        f"`triangle` and `bottom` (split in pieces by the vocabulary writer of the time, fixed since), so 2 % of the "
        f"captions (a triangle with a place and a background) lost their last words to the 20-token limit.",
        "- PNDM scheduler with Stable Diffusion v1's noise schedule (scaled_linear, 1000 steps, epsilon prediction).",
    ])


def model_card(summary: dict, model: Path) -> str:
    """The card's Markdown text, from the summary.json a pretraining run wrote and the saved model folder."""
    a = summary["args"]
    minutes = {name: seconds / 60 for name, seconds in summary["stage_s"].items()}
    evaluation = summary.get("evaluation", "Run `python -m dreambooth_nb.toyworld.evaluate` for the judge's agreement.")
    round_trip = ", ".join(f"{k} {v:.1%}" for k, v in summary.get("vae_round_trip", {}).items())
    return f"""# toy-world: a small Stable Diffusion of coloured shapes

Pretrained from scratch with MindSpore (GRAPH mode, CPU) by `python -m dreambooth_nb.toyworld.pretrain`.
It is the default model of the dreambooth-nb notebooks and of `make demo`; chapter 06 measures it. Load it with
`db.load_pipeline("toy-world")` or `StableDiffusionPipeline.from_pretrained(<this folder>/model)`.

## Data
{a['images']} procedural pictures, {scenes.SIZE}x{scenes.SIZE} px (`dreambooth_nb.common.scenes.dataset({a['images']}, seed={a['seed']})`):
one {", ".join(scenes.SHAPES)} in one of {len(scenes.COLOURS)} colours ({", ".join(scenes.COLOURS)}) on a
plain background ({len(scenes.BACKGROUNDS)} colours, never the object's), at a random size, place and tilt.
Captions: `a photo of a [small|big] [<colour>] <shape>[ on the left|on the right|at the top|at the bottom][ on a <background> background]`;
each attribute is named with its own chance (colour {scenes.SAY['colour']:.0%}, size {scenes.SAY['size']:.0%},
place {scenes.SAY['place']:.0%}, background {scenes.SAY['background']:.0%}), and during training the caption is
replaced by the empty prompt {a['drop']:.0%} of the time (for classifier-free guidance).
No patterned (striped) object is in the data: the DreamBooth subject of the notebooks is new to the model.

## Model
{architecture(model)}

## Training
On a shared 2-core x86_64 CPU, MindSpore {summary['versions']['mindspore']}, mindone {summary['versions']['mindone']}:
- VAE: {a['vae_steps']} AdamW steps, batch {a['vae_batch']}, lr {a['vae_lr']} (warmup + cosine), L1 reconstruction +
  {a['kl_weight']} x KL; {a['vae_stripes']:.0%} of its pictures have a striped object (so it can encode a striped
  subject; the captioned data has none); final loss (mean of the last 100 steps) {summary['vae_loss']:.4f}.
  {minutes['vae']:.0f} min.
- The decoder alone, encoder frozen (the latents do not change): {a.get('decoder_steps', 0)} steps, lr
  {a.get('decoder_lr')}, L1; final loss {summary.get('decoder_loss') or float('nan'):.4f}. {minutes.get('decoder', 0):.0f} min.
  The judge reads the VAE's round trip (encode, decode) of fresh pictures as the original: {round_trip or 'not measured'}
  ("subject": the striped subject drawn in fresh contexts).
- UNet + text encoder on cached VAE latents: {a['unet_steps']} AdamW steps, batch {a['batch']}, lr {a['lr']} (warmup +
  cosine), weight decay 0.01, gradient clipping 1.0, Min-SNR weighting (gamma {a['snr_gamma']}); final loss (weighted
  epsilon MSE, mean of the last 100 steps) {summary['unet_loss']:.4f}. {minutes['unet']:.0f} min.
- In all {sum(minutes.values()):.0f} min of wall time (summed over resumed runs; the machine was shared with other
  work, so an idle one is faster).

## How well it follows prompts
{evaluation}

## Reproduce
```
{reproduce_command(a)}
python -m dreambooth_nb.toyworld.evaluate
```
Each stage checkpoints every 200 steps and resumes where it stopped when the command is run again with the same `--out`.
Results match closely but not bit for bit across machines (thread scheduling in CPU kernels).

## Judge
`judge.npz`: softmax regression over the object's silhouette (shape), trained on generator pictures (30 % of them
striped); colour, pattern, background, size and place are measured from the pixels. On fresh generator pictures it
reads every attribute right at least 98 % of the time (`tests/test_toyworld.py`). See `dreambooth_nb/toyworld/judge.py`.
"""

"""MODEL_CARD.md of the toy-world model: what it is, how it was trained, what it cost, how well it follows prompts."""

from __future__ import annotations

import json
from pathlib import Path

from ..common import scenes


def reproduce_command(args: dict, install: bool = True) -> str:
    """The command line of one pretraining run."""
    flags = " ".join(f"--{k} {' '.join(map(str, v))}" if isinstance(v, (list, tuple)) else f"--{k}={v}"
                     for k, v in args.items() if k not in ("out", "install") and v is not None)
    return f"python -m dreambooth_nb.toyworld.pretrain --out {args['out']} {flags}" + (" --install" if install else "")


def earlier_runs(args: dict, depth: int = 3) -> dict:
    """The summaries of the runs this one started from (its --vae_from and --unet_from models, read from the
    summary.json beside each model folder), each with its own earlier runs: {"vae": ..., "unet": ...}."""
    found = {}
    for part, key in (("vae", "vae_from"), ("unet", "unet_from")):
        summary = Path(args[key]).parent / "summary.json" if args.get(key) else None
        if depth and summary is not None and summary.is_file():
            earlier = json.loads(summary.read_text(encoding="utf-8"))
            earlier.setdefault("earlier", earlier_runs(earlier["args"], depth - 1))
            found[part] = earlier
    return found


def stages(summary: dict) -> list[tuple[str, dict]]:
    """The runs that made the model's weights, oldest first: ("VAE", the run that trained its VAE), then
    ("UNet", run) for the run that trained the UNet and text encoder from scratch and each further stage on them.
    A run's --vae_from / --unet_from are rewritten to the model folder its earlier run wrote (out/model)."""
    def chain(run: dict, part: str) -> list[dict]:
        earlier = run.get("earlier", {}).get(part)
        return (chain(earlier, part) if earlier else []) + [run]

    def pointed(run: dict) -> dict:
        args = dict(run["args"])
        for part, key in (("vae", "vae_from"), ("unet", "unet_from")):
            earlier = run.get("earlier", {}).get(part)
            if args.get(key) and earlier:  # the VAE: the run that trained it (later runs only passed it on)
                source = chain(earlier, "vae")[0] if part == "vae" else earlier
                args[key] = f"{source['args']['out']}/model"
        return {**run, "args": args}

    vae_run, *_ = chain(summary, "vae")
    unet_runs = chain(summary, "unet")
    vae_only = {**vae_run, "args": {**pointed(vae_run)["args"], "unet_steps": 0, "curve_every": 0}}
    return [("VAE", vae_only)] + [("UNet", pointed(run)) for run in unet_runs if run is not vae_run or run is summary]


def stage_minutes(what: str, summary: dict) -> float:
    """Wall minutes of the part of a run that went into the model (a VAE run's UNet stage, unused, is left out)."""
    parts = ("vae", "decoder") if what == "VAE" else ("unet",)
    return sum(summary["stage_s"].get(k, 0.0) for k in parts) / 60


def stage_text(what: str, summary: dict) -> str:
    """One run's bullet: what it trained, with which settings, its loss and its time."""
    a, minutes = summary["args"], {k: v / 60 for k, v in summary["stage_s"].items()}
    lines = []
    if what == "VAE":
        lines.append(f"- VAE: {a['vae_steps']} AdamW steps, batch {a['vae_batch']}, lr {a['vae_lr']} (warmup + cosine), "
                     f"L1 + {a['kl_weight']} x KL, {a['vae_stripes']:.0%} of its pictures striped (so it can encode the "
                     f"striped subject); then the decoder alone ({a.get('decoder_steps', 0)} steps, lr {a.get('decoder_lr')}); "
                     f"{minutes['vae'] + minutes.get('decoder', 0):.0f} min." + world_note(summary))
    if what == "UNet":
        weighting = f"Min-SNR weighting (gamma {a['snr_gamma']})" if a.get("snr_gamma") else "no loss weighting"
        start = f"starting from `{a['unet_from']}`" if a.get("unet_from") else "from scratch"
        lines.append(f"- UNet + text encoder, {start}: {a['unet_steps']} AdamW steps, batch {a['batch']}, lr {a['lr']} "
                     f"(warmup + cosine), weight decay 0.01, clipping 1.0, schedule `{a.get('schedule', 'sd')}`, {weighting}; "
                     f"final loss (last 100 steps) {summary['unet_loss']:.4f}; {minutes['unet']:.0f} min."
                     + world_note(summary))
    return "\n".join(lines)


def world_note(summary: dict) -> str:
    """A sentence when a run drew another world than today's (its object sizes): reproducing it needs that version."""
    radii = summary.get("world", {}).get("radii")
    if radii is None or {k: tuple(v) for k, v in radii.items()} == scenes.RADII:
        return ""
    low, high = radii[""]
    return (f" Its pictures drew radii {low:g}-{high:g} px, the world of its time (`{summary['world'].get('commit', '')}`"
            f"'s scenes.py); today's draws {scenes.RADII[''][0]:g}-{scenes.RADII[''][1]:g}.")


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
        f"{text['hidden_size']}, {text['max_position_embeddings']} tokens; CLIPTokenizer with every toy-world word "
        f"and rare name as one token.",
        scheduler_line(read_json(model / "scheduler" / "scheduler_config.json")),
    ])


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def scheduler_line(config: dict) -> str:
    """The Model section's bullet on the noise schedule and the sampler."""
    zero = ", rescaled to zero terminal SNR" if config.get("rescale_betas_zero_snr") else " (terminal SNR 0.0047)"
    return (f"- {config['_class_name']} sampler; noise schedule: {config['beta_schedule']} betas "
            f"{config['beta_start']}-{config['beta_end']}{zero}, {config['num_train_timesteps']} steps, "
            f"{config['prediction_type']} prediction, {config.get('timestep_spacing', 'leading')} timestep spacing.")


def model_card(summary: dict, model: Path) -> str:
    """The card's Markdown text, from the summary.json a pretraining run wrote (with the runs it started from, under
    "earlier") and the saved model folder."""
    a = summary["args"]
    runs = stages(summary)
    minutes = sum(stage_minutes(what, run) for what, run in runs)
    evaluation = summary.get("evaluation", "Run `python -m dreambooth_nb.toyworld.evaluate` for the judge's agreement.")
    round_trip = ", ".join(f"{k} {v:.1%}" for k, v in summary.get("vae_round_trip", {}).items())
    small, big = scenes.RADII["small"], scenes.RADII["big"]
    commands = "\n".join(reproduce_command(run["args"], install=i == len(runs) - 1) for i, (_, run) in enumerate(runs))
    return f"""# toy-world: a small Stable Diffusion of coloured shapes

Pretrained from scratch with MindSpore (GRAPH mode, CPU) by `python -m dreambooth_nb.toyworld.pretrain`.
It is the default model of the dreambooth-nb notebooks and of `make demo`; chapter 06 measures it. Load it with
`db.load_pipeline("toy-world")` or `StableDiffusionPipeline.from_pretrained(<this folder>/model)`.

## Data
{a['images']} procedural pictures, {scenes.SIZE}x{scenes.SIZE} px (`dreambooth_nb.common.scenes.dataset({a['images']}, seed={a['seed']})`):
one {", ".join(scenes.SHAPES)} in one of {len(scenes.COLOURS)} colours ({", ".join(scenes.COLOURS)}) on a
plain background ({len(scenes.BACKGROUNDS)} colours, never the object's), at a random size (radius {scenes.RADII[''][0]:g}-{scenes.RADII[''][1]:g} px;
`small` {small[0]:g}-{small[1]:g}, `big` {big[0]:g}-{big[1]:g}), place and tilt.
Captions: `a photo of a [small|big] [<colour>] <shape>[ on the left|on the right|at the top|at the bottom][ on a <background> background]`;
each attribute is named with its own chance (colour {scenes.SAY['colour']:.0%}, size {scenes.SAY['size']:.0%},
place {scenes.SAY['place']:.0%}, background {scenes.SAY['background']:.0%}). In {a.get('named', scenes.NAMED):.0%} of the
captions a rare word names one fixed thing instead of its colour (`a photo of zwx heart`: always the same green heart;
{len(scenes.NAMES)} such names, `sks` the rarest), so the text encoder learns that a rare word can carry meaning.
During training the caption is replaced by the empty prompt {a['drop']:.0%} of the time (for classifier-free guidance).
No patterned (striped) object is in the captioned data: the DreamBooth subject of the notebooks is new to the model.

## Model
{architecture(model)}

## Training
On a shared 2-core x86_64 CPU, MindSpore {summary['versions']['mindspore']}, mindone {summary['versions']['mindone']}, in
{len(runs)} runs (each resumable, checkpointing every 200 steps):
{chr(10).join(stage_text(what, run) for what, run in runs)}
- In all {minutes:.0f} min of wall time (the machine was shared with other work, so an idle one is faster).

The judge reads the VAE's round trip (encode, decode) of fresh pictures as the original: {round_trip or 'not measured'}
("subject": the striped subject drawn in fresh contexts).

## How well it follows prompts
{evaluation}

## Reproduce
```
{commands}
python -m dreambooth_nb.toyworld.evaluate
```
Run each command again with the same `--out` and it resumes where it stopped. Results match closely but not bit for
bit across machines (thread scheduling in CPU kernels).

## Judge
`judge.npz`: softmax regression over the object's silhouette (shape), trained on generator pictures (30 % of them
striped); colour, pattern, background, size and place are measured from the pixels. On fresh generator pictures it
reads every attribute right at least 98 % of the time (`tests/test_toyworld.py`). See `dreambooth_nb/common/judge.py`.
"""

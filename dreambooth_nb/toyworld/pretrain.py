"""Pretrain the toy-world Stable Diffusion from scratch: VAE first, then UNet + text encoder on cached latents.

    python -m dreambooth_nb.toyworld.pretrain --out outputs/toyworld
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .. import runtime
from ..models import sd_scheduler_config, tokenize, write_tiny_tokenizer
from ..runtime import import_quietly
from . import scenes

MAX_TOKENS = 16  # longest caption is 13 tokens with <|startoftext|> and <|endoftext|>


def toy_tokenizer(folder: Path):
    """A CLIPTokenizer whose vocabulary holds every toy-world word (and 'sks') as one token."""
    from transformers import CLIPTokenizer

    write_tiny_tokenizer(folder, scenes.WORDS)
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_TOKENS)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def unet_config() -> dict:
    """A small conditional UNet for 16x16x4 latents, cross-attention at 8x8."""
    return dict(
        sample_size=scenes.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), cross_attention_dim=64, attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def vae_config() -> dict:
    """A two-level VAE: 32x32 pictures to 16x16x4 latents."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=[16, 32],
        norm_num_groups=8, mid_block_add_attention=False, down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2, sample_size=scenes.SIZE,
    )


def text_config(vocab_size: int) -> dict:
    """A 2-layer CLIP text encoder of width 64."""
    return dict(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=64, intermediate_size=128,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS,
    )


def build_networks(folder: Path, seed: int = 0):
    """Tokenizer (written to folder/tokenizer), text encoder, VAE and UNet, freshly initialised."""
    import mindspore as ms
    from transformers import CLIPTextConfig

    diffusers = import_quietly("mindone.diffusers")
    CLIPTextModel = import_quietly("mindone.transformers").CLIPTextModel
    tokenizer = toy_tokenizer(folder / "tokenizer")
    ms.set_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer))))
    vae = diffusers.AutoencoderKL(**vae_config())
    unet = diffusers.UNet2DConditionModel(**unet_config())
    return tokenizer, text_encoder, vae, unet


def load_networks(folder: Path):
    """Tokenizer, text encoder, VAE and UNet of a saved toy-world model, to train further."""
    from transformers import CLIPTokenizer

    diffusers = import_quietly("mindone.diffusers")
    CLIPTextModel = import_quietly("mindone.transformers").CLIPTextModel
    if not (folder / "model_index.json").is_file():
        raise FileNotFoundError(f"--init_from {folder}: no model_index.json there; give a folder in diffusers layout.")
    return (CLIPTokenizer.from_pretrained(str(folder / "tokenizer")),
            CLIPTextModel.from_pretrained(str(folder / "text_encoder")),
            diffusers.AutoencoderKL.from_pretrained(str(folder / "vae")),
            diffusers.UNet2DConditionModel.from_pretrained(str(folder / "unet")))


# ------------------------------------------------------------------------- losses (compiled)
def vae_loss_net(vae, kl_weight: float):
    """A Cell: L1 reconstruction of the pictures plus kl_weight x KL to N(0, 1)."""
    from mindspore import nn, ops

    class VAELoss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.vae, self.kl_weight = vae, kl_weight

        def construct(self, pixels, noise):
            mean, logvar = ops.chunk(self.vae.encode(pixels)[0], 2, axis=1)
            logvar = ops.clamp(logvar, -30.0, 20.0)
            recon = self.vae.decode(mean + ops.exp(0.5 * logvar) * noise)[0]
            kl = 0.5 * (mean ** 2 + ops.exp(logvar) - 1.0 - logvar).mean()
            return ops.abs(recon - pixels).mean() + self.kl_weight * kl

    return VAELoss()


def denoise_loss_net(unet, text_encoder, alphas_cumprod: np.ndarray, snr_gamma: float | None = None):
    """A Cell: epsilon-prediction MSE of the UNet on noised latents, conditioned on the text encoder.

    With snr_gamma, each example is weighted min(SNR, gamma) / SNR (Min-SNR, as `--snr_gamma` in training):
    less weight on nearly clean latents, where the caption hardly matters.
    """
    import mindspore as ms
    from mindspore import nn, ops

    from ..train.losses import snr_weights

    class DenoiseLoss(nn.Cell):
        def __init__(self):
            super().__init__()
            self.unet, self.text_encoder = unet, text_encoder
            self.alphas_cumprod = ms.Tensor(alphas_cumprod, ms.float32)

        def construct(self, latents, input_ids, noise, timesteps):
            a = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
            noisy = ops.sqrt(a) * latents + ops.sqrt(1.0 - a) * noise
            pred = self.unet(noisy, timesteps, self.text_encoder(input_ids)[0], return_dict=False)[0]
            mse = ((pred - noise) ** 2).mean(axis=(1, 2, 3))
            if snr_gamma is None:
                return mse.mean()
            return (mse * snr_weights(self.alphas_cumprod, timesteps, snr_gamma, False)).mean()

    return DenoiseLoss()


def train_step(loss_net, params, learning_rates: list[float], weight_decay: float, max_grad_norm: float = 1.0):
    """A Cell running loss, gradients, clipping and an AdamW update as one compiled graph."""
    import mindspore as ms
    from mindspore import nn, ops

    optimizer = nn.AdamWeightDecay(params, learning_rate=learning_rates + learning_rates[-1:], weight_decay=weight_decay)

    class Step(nn.Cell):
        def __init__(self):
            super().__init__()
            self.loss_net, self.optimizer = loss_net, optimizer
            self.grad_fn = ms.value_and_grad(loss_net, None, optimizer.parameters)

        def construct(self, *inputs):
            loss, grads = self.grad_fn(*inputs)
            self.optimizer(ops.clip_by_global_norm(grads, max_grad_norm))
            return loss

    return Step()


def cosine_rates(peak: float, steps: int, warmup: int = 50) -> list[float]:
    """Linear warmup then cosine decay to 5% of the peak."""
    out = []
    for i in range(steps):
        if i < warmup:
            out.append(peak * (i + 1) / warmup)
        else:
            progress = (i - warmup) / max(1, steps - warmup)
            out.append(peak * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress))))
    return out


# ------------------------------------------------------------------------------ the loop
def run_stage(name: str, step_fn, make_batch, steps: int, out: Path, every: int = 100) -> list[float]:
    """Run `steps` compiled steps, logging and checkpointing to out/<name>.*; resumes from the checkpoint."""
    import mindspore as ms

    ckpt, log = out / f"{name}.ckpt", out / f"{name}.json"
    state = json.loads(log.read_text()) if log.is_file() and ckpt.is_file() else {"history": [], "seconds": 0.0}
    if state["history"]:
        saved = ms.load_checkpoint(str(ckpt))  # the lr schedule comes from the arguments, not the checkpoint
        ms.load_param_into_net(step_fn, {k: v for k, v in saved.items() if "learning_rate" not in k})
    start_wall = time.time() - state["seconds"]
    for step in range(len(state["history"]), steps):
        loss = float(step_fn(*[ms.Tensor(x) for x in make_batch(step)]).asnumpy())
        state["history"].append(loss)
        if (step + 1) % every == 0 or step + 1 == steps:
            state["seconds"] = time.time() - start_wall
            ms.save_checkpoint(step_fn, str(out / f"{name}.tmp.ckpt"))
            (out / f"{name}.tmp.ckpt").replace(ckpt)
            log.write_text(json.dumps(state))
            recent = np.mean(state["history"][-every:])
            print(f"{name} step {step + 1}/{steps} loss {recent:.4f} ({state['seconds']:.0f} s)", flush=True)
    return state["history"]


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float32 in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def encode_latents(vae, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """The VAE's mean latents of every picture (compiled encoder, fixed batch size)."""
    import mindspore as ms
    from mindspore import nn, ops

    class Encode(nn.Cell):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def construct(self, pixels):
            return ops.chunk(self.vae.encode(pixels)[0], 2, axis=1)[0]

    encode, vae_mode = Encode(), vae.training
    vae.set_train(False)
    out = [encode(ms.Tensor(to_pixels(images[i:i + batch]))).asnumpy() for i in range(0, len(images), batch)]
    vae.set_train(vae_mode)
    return np.concatenate(out)


# ----------------------------------------------------------------------------- stages
def train_vae(vae, images: np.ndarray, args, out: Path) -> list[float]:
    """Stage 1: fit the VAE to the pictures (L1 + a small KL)."""
    vae.set_train(True)
    step = train_step(vae_loss_net(vae, args.kl_weight), vae.trainable_params(),
                      cosine_rates(args.vae_lr, args.vae_steps), weight_decay=0.0)
    latent = (4, scenes.SIZE // 2, scenes.SIZE // 2)

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 0])
        idx = rng.integers(0, len(images), args.vae_batch)
        return to_pixels(images[idx]), rng.standard_normal((args.vae_batch, *latent), dtype=np.float32)

    return run_stage("vae", step, batch, args.vae_steps, out)


def train_unet(unet, text_encoder, latents: np.ndarray, ids: np.ndarray, empty_ids: np.ndarray, args, out: Path):
    """Stage 2: fit UNet + text encoder on cached latents; drop the caption args.drop of the time (for guidance)."""
    diffusers = import_quietly("mindone.diffusers")
    sched = diffusers.DDPMScheduler.from_config(sd_scheduler_config())
    alphas = np.asarray(sched.alphas_cumprod.asnumpy() if hasattr(sched.alphas_cumprod, "asnumpy")
                        else sched.alphas_cumprod, dtype=np.float32)
    unet.set_train(True)
    text_encoder.set_train(True)
    params = list(unet.trainable_params()) + list(text_encoder.trainable_params())
    loss_net = denoise_loss_net(unet, text_encoder, alphas, args.snr_gamma)
    step = train_step(loss_net, params, cosine_rates(args.lr, args.unet_steps), 1e-2)

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 1])
        idx = rng.integers(0, len(latents), args.batch)
        tokens = np.where(rng.random((args.batch, 1)) < args.drop, empty_ids, ids[idx]).astype(np.int32)
        noise = rng.standard_normal((args.batch, *latents.shape[1:]), dtype=np.float32)
        return latents[idx], tokens, noise, rng.integers(0, len(alphas), args.batch).astype(np.int32)

    return run_stage("unet", step, batch, args.unet_steps, out)


def save_pipeline(folder: Path, tokenizer, text_encoder, vae, unet) -> Path:
    """Save the toy-world model in diffusers layout (safetensors), PNDM sampler like SD v1."""
    diffusers = import_quietly("mindone.diffusers")
    pipe = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=diffusers.PNDMScheduler.from_config({**sd_scheduler_config(), "skip_prk_steps": True}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(str(folder))
    return folder


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line settings; the defaults reproduce the committed model."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/toyworld", help="Folder for logs, checkpoints and the model.")
    p.add_argument("--images", type=int, default=20000, help="Pictures in the fixed training set.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vae_steps", type=int, default=400)
    p.add_argument("--vae_batch", type=int, default=64)
    p.add_argument("--vae_lr", type=float, default=1.5e-3)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--unet_steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--drop", type=float, default=0.1, help="Share of empty captions (classifier-free guidance).")
    p.add_argument("--snr_gamma", type=float, default=None, help="Min-SNR loss weighting (5.0 is typical).")
    p.add_argument("--init_from", default=None,
                   help="Start from a saved toy-world model (diffusers folder) instead of fresh weights; "
                        "with --vae_steps 0 its VAE is kept as it is.")
    p.add_argument("--install", action="store_true", help="Copy the result into dreambooth_nb/assets/toyworld.")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    """Pretrain (resuming from out/ when interrupted), save the model and the judge, write the model card."""
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.setup(show=False, seed=args.seed)
    wall, cpu = time.time(), time.process_time()
    if args.init_from:
        tokenizer, text_encoder, vae, unet = load_networks(Path(args.init_from))
    else:
        tokenizer, text_encoder, vae, unet = build_networks(out, args.seed)
    images, captions, _ = scenes.dataset(args.images, args.seed)
    vae_history = train_vae(vae, images, args, out) if args.vae_steps else []
    latents = encode_latents(vae, images)
    scale = float(1.0 / latents.std()) if args.vae_steps or not args.init_from else float(vae.config.scaling_factor)
    vae.register_to_config(scaling_factor=scale)
    ids = tokenize(tokenizer, captions)
    unet_history = train_unet(unet, text_encoder, latents * scale, ids, tokenize(tokenizer, ""), args, out)
    save_pipeline(out / "model", tokenizer, text_encoder, vae, unet)
    from . import judge

    judge.train_judge().save(out / "judge.npz")
    summary = dict(args=vars(args), vae_loss=float(np.mean(vae_history[-50:])) if vae_history else None,
                   unet_loss=float(np.mean(unet_history[-50:])), scaling_factor=scale,
                   wall_s=time.time() - wall, cpu_s=time.process_time() - cpu,
                   stage_s={n: json.loads((out / f"{n}.json").read_text())["seconds"]
                            for n in ("vae", "unet") if (out / f"{n}.json").is_file()},
                   started_from=previous_summary(args.init_from))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    if args.install:
        install(out)
    return out


def previous_summary(init_from: str | None) -> dict | None:
    """The summary.json of the model a run started from (beside its model/ folder), so the card tells the whole story."""
    if not init_from:
        return None
    path = Path(init_from).parent / "summary.json"
    return json.loads(path.read_text()) if path.is_file() else {"args": {"out": str(Path(init_from).parent)}, "unknown": True}


def stages(summary: dict) -> list[dict]:
    """The runs that made a model, oldest first."""
    chain = []
    while summary:
        chain.insert(0, summary)
        summary = summary.get("started_from")
    return chain


def install(out: Path) -> Path:
    """Copy model, judge and summary from `out` into the package's assets/toyworld folder."""
    import shutil

    from . import assets_dir

    target = assets_dir()
    shutil.copytree(out / "model", target / "model", dirs_exist_ok=True)
    for config in (target / "model").glob("*/config.json"):  # where it was trained is not part of the model
        settings = json.loads(config.read_text())
        settings.pop("_name_or_path", None)
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    for name in ("judge.npz", "summary.json"):
        shutil.copy2(out / name, target / name)
    summary = json.loads((out / "summary.json").read_text())
    (target / "MODEL_CARD.md").write_text(model_card(summary), encoding="utf-8")
    return target


def stage_text(number: int, summary: dict) -> str:
    """One run of the model card's Training section: what it trained, its final losses and its cost."""
    a = summary["args"]
    lines = [f"### Run {number}" + (f": continued from run {number - 1}" if a.get("init_from") else ": from scratch")]
    if a.get("vae_steps"):
        lines.append(f"- VAE: {a['vae_steps']} AdamW steps, batch {a['vae_batch']}, lr {a['vae_lr']} (warmup + cosine), "
                     f"L1 reconstruction + {a['kl_weight']} x KL; final loss (mean of the last 50 steps) {summary['vae_loss']:.4f}.")
    else:
        lines.append("- VAE: kept as it was.")
    weighting = f", Min-SNR weighting (gamma {a['snr_gamma']})" if a.get("snr_gamma") else ""
    lines.append(f"- UNet + text encoder on cached VAE latents: {a['unet_steps']} AdamW steps, batch {a['batch']}, "
                 f"lr {a['lr']} (warmup + cosine), weight decay 0.01, gradient clipping 1.0{weighting}; the caption is "
                 f"replaced by the empty prompt {a['drop']:.0%} of the time (classifier-free guidance). Final loss "
                 f"(epsilon MSE{', weighted' if weighting else ''}, mean of the last 50 steps): {summary['unet_loss']:.4f}.")
    stage_s = summary["stage_s"]
    cost = ", ".join(f"{name} stage {seconds / 60:.1f} min" for name, seconds in stage_s.items())
    lines.append(f"- Cost: {cost} of wall time (summed over resumed runs); the last process ran "
                 f"{summary['wall_s'] / 60:.1f} min wall, {summary['cpu_s'] / 60:.1f} min CPU (both cores).")
    lines += [f"- {note}" for note in summary.get("notes", [])]
    return "\n".join(lines)


def reproduce_command(summary: dict) -> str:
    """The command line of one run."""
    a = summary["args"]
    flags = " ".join(f"--{k}={v}" for k, v in a.items() if k not in ("out", "install") and v is not None)
    return f"python -m dreambooth_nb.toyworld.pretrain --out {a['out']} {flags}"


def model_card(summary: dict) -> str:
    """MODEL_CARD.md text: what the model is, how it was trained, what it cost, how to reproduce it."""
    runs = stages(summary)
    first = runs[0]["args"]
    total_min = sum(sum(r["stage_s"].values()) for r in runs) / 60
    commands = "\n".join(reproduce_command(r) for r in runs) + " --install"
    training = "\n\n".join(stage_text(i + 1, r) for i, r in enumerate(runs))
    return f"""# toy-world: a small Stable Diffusion of coloured shapes

Pretrained from scratch with MindSpore (GRAPH mode, CPU) by `python -m dreambooth_nb.toyworld.pretrain`.
It is the default model of the dreambooth-nb notebooks and of `make demo`; chapter 06 measures it. Load it with
`db.load_pipeline("toy-world")` or `StableDiffusionPipeline.from_pretrained(<this folder>/model)`.

## Data
{first['images']} procedural pictures, {scenes.SIZE}x{scenes.SIZE} px (`dreambooth_nb.toyworld.scenes.dataset({first['images']}, seed={first['seed']})`):
one {", ".join(scenes.SHAPES)} in one of {len(scenes.COLOURS)} colours ({", ".join(scenes.COLOURS)}) on a
plain background ({len(scenes.BACKGROUNDS)} colours, never the object's), random size, place and tilt.
Captions: `a photo of a [small|big] <colour> <shape>[ on a <background> background]`.
No patterned (striped) object is in the data: the DreamBooth subject of the notebooks is new to the model.

## Model
- VAE (AutoencoderKL): 32x32x3 to 16x16x4 latents, channels (16, 32), no attention; scaling factor {summary['scaling_factor']:.4f} (1 / std of the latents).
- UNet2DConditionModel: channels (32, 64), one layer per block, cross-attention at 8x8, 64-d text features.
- CLIPTextModel: 2 layers, width 64, 16 tokens; CLIPTokenizer with every toy word (and `sks`) as one token.
- PNDM scheduler with Stable Diffusion v1's noise schedule (scaled_linear, 1000 steps, epsilon prediction).

## Training
{len(runs)} run(s), {total_min:.0f} min of wall time in all on a shared 2-core x86_64 CPU, MindSpore 2.7.1, mindone 0.3.0.

{training}

## Reproduce
```
{commands}
python -m dreambooth_nb.toyworld.evaluate
```
Each run checkpoints every 100 steps and resumes where it stopped when started again with the same `--out`.
Results match closely but not bit for bit across machines (thread scheduling in CPU kernels).

## Judge
`judge.npz`: softmax regression over the object's silhouette (shape); the colour is the palette colour
most object pixels are nearest to. See `dreambooth_nb/toyworld/judge.py`.
"""


if __name__ == "__main__":
    main()

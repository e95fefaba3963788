"""Pretrain the toy-world Stable Diffusion from scratch: the VAE, its decoder alone, then UNet + text encoder on
cached latents.

    python -m dreambooth_nb.toyworld.pretrain --out outputs/toyworld [--install]

Every stage runs on the training engine's compiled step (train.step) and writes its resumable checkpoints
(train.checkpoint) under out/vae/, out/decoder/ and out/unet/: run the same command again and it continues where it
stopped. The UNet stage uses the DreamBooth loss itself (losses.DreamBoothLoss) on latents computed once.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..common import defaults, runtime, scenes
from ..common.files import write_json_atomic
from ..common.runtime import import_quietly
from ..common.tiny_model import SCHEDULES, schedule_config, write_tokenizer
from ..models import Components, alphas_cumprod, tokenize_with_mask, vae_cells
from ..train import checkpoint as ckpt
from ..train.engine import Trainer
from ..train.step import adamw, make_step, schedule_values
from ..common.errors import InputError

MAX_TOKENS = 20  # the longest caption is 16 tokens with <|startoftext|> and <|endoftext|>
CHECKPOINT_EVERY = 200
SAMPLER = "DPMSolverMultistepScheduler"  # the sampler the toy world ships with: it honours every schedule


# ------------------------------------------------------------------------------ the networks
UNET_CHANNELS = (32, 64, 64)  # the installed model's widths per level (16x16, 8x8, 4x4)


def unet_config(channels: tuple = UNET_CHANNELS, layers: int = 1) -> dict:
    """A small conditional UNet for 16x16x4 latents: three levels of `channels` widths (multiples of 16), `layers`
    residual blocks each, cross-attention at 8x8 and 4x4."""
    return dict(
        sample_size=scenes.SIZE // 2, in_channels=4, out_channels=4, layers_per_block=layers,
        block_out_channels=tuple(channels), cross_attention_dim=64, attention_head_dim=8, norm_num_groups=16,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    )


def vae_config() -> dict:
    """A two-level VAE without attention: 32x32 pictures to 16x16x4 latents."""
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, block_out_channels=[16, 32],
        norm_num_groups=8, mid_block_add_attention=False, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, sample_size=scenes.SIZE,
    )


def text_config(vocab_size: int) -> dict:
    """A 3-layer CLIP text encoder of width 64."""
    return dict(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=64, intermediate_size=128,
        num_attention_heads=4, num_hidden_layers=3, vocab_size=vocab_size, max_position_embeddings=MAX_TOKENS,
    )


def build_components(folder: Path, seed: int = defaults.SEED, schedule: str = "sd", vae_from: str | None = None,
                     unet_from: str | None = None, unet_channels: tuple = UNET_CHANNELS, unet_layers: int = 1) -> Components:
    """Tokenizer (written to folder/tokenizer), text encoder, VAE, UNet and noise schedule, freshly initialised
    (the VAE loaded from the model folder `vae_from`, the UNet and text encoder from `unet_from`, when given; a fresh
    UNet has unet_channels per level and unet_layers blocks each)."""
    import mindspore as ms
    from transformers import CLIPTextConfig

    diffusers = import_quietly("mindone.diffusers")
    CLIPTextModel = import_quietly("mindone.transformers").CLIPTextModel
    tokenizer = write_tokenizer(folder / "tokenizer", scenes.VOCABULARY, MAX_TOKENS)
    ms.set_seed(seed)
    text_encoder = (CLIPTextModel.from_pretrained(str(Path(unet_from) / "text_encoder")) if unet_from
                    else CLIPTextModel(CLIPTextConfig(**text_config(len(tokenizer)))))
    unet = (diffusers.UNet2DConditionModel.from_pretrained(str(Path(unet_from) / "unet")) if unet_from
            else diffusers.UNet2DConditionModel(**unet_config(unet_channels, unet_layers)))
    vae = (diffusers.AutoencoderKL.from_pretrained(str(Path(vae_from) / "vae")) if vae_from
           else diffusers.AutoencoderKL(**vae_config()))
    return Components(tokenizer, text_encoder, vae, unet, diffusers.DDPMScheduler.from_config(schedule_config(schedule)),
                      str(folder), scheduler_class=SAMPLER)


# ------------------------------------------------------------------------------ losses
def vae_loss_net(vae, kl_weight: float):
    """A Cell: L1 reconstruction of the pictures plus kl_weight x KL to N(0, 1)."""
    from mindspore import nn, ops

    class VAELoss(nn.Cell):
        terms = ("loss", "reconstruction", "kl")

        def __init__(self):
            super().__init__()
            self.vae, self.kl_weight = vae, kl_weight

        def construct(self, pixels, noise):
            mean, logvar = ops.chunk(self.vae.encode(pixels)[0], 2, axis=1)
            logvar = ops.clamp(logvar, -30.0, 20.0)
            recon = self.vae.decode(mean + ops.exp(0.5 * logvar) * noise)[0]
            kl = 0.5 * (mean ** 2 + ops.exp(logvar) - 1.0 - logvar).mean()
            l1 = ops.abs(recon - pixels).mean()
            return l1 + self.kl_weight * kl, l1, kl

    return VAELoss()


def denoise_loss_net(components: Components, snr_gamma: float | None):
    """The DreamBooth loss without prior and without VAE: the UNet + text encoder on latents given directly."""
    from ..losses import DreamBoothLoss

    schedule = components.noise_scheduler
    return DreamBoothLoss(components.unet, None, components.text_encoder, alphas_cumprod(schedule),
                          1.0, schedule.config.prediction_type, snr_gamma=snr_gamma, train_text_encoder=True)


def stage_trainer(loss_net, nets: dict, peak_lr: float, steps: int, weight_decay: float) -> Trainer:
    """The engine's compiled step (gradients, clipping at 1.0, AdamW) for one stage."""
    params = [p for net in nets.values() for p in net.trainable_params()]
    schedule = schedule_values("cosine", peak_lr, min(200, steps // 10), steps)  # warmup, then cosine decay to 0
    optimizer = adamw(params, schedule, weight_decay)
    step_cell, _ = make_step(loss_net, optimizer, max_grad_norm=1.0)
    return Trainer(step_cell, None, optimizer, schedule, nets, terms=loss_net.terms)


# ------------------------------------------------------------------------------ the loop
@dataclass
class StageLog:
    """Loss of every step and seconds spent, kept in each checkpoint's state.json (so a resumed stage keeps its story)."""

    history: list
    seconds: float = 0.0


def run_stage(name: str, trainer: Trainer, make_batch, steps: int, out: Path, probe=None,
              probe_every: int = 0) -> StageLog:
    """Run `steps` compiled steps, checkpointing to out/<name>/ every CHECKPOINT_EVERY; resumes from the latest
    checkpoint. probe(step), when given, runs every `probe_every` steps, right after that step's checkpoint."""
    folder = out / name
    log = StageLog([])
    latest = ckpt.find_checkpoint("latest", folder)
    if latest is not None:
        state = ckpt.load_checkpoint(latest, trainer.nets, trainer.optimizer)
        log = StageLog(list(state["history"]), float(state["seconds"]))
        print(f"{name}: resumed from {latest}", flush=True)
    start = time.time() - log.seconds
    for step in range(len(log.history), steps):
        log.history.append(trainer.run(make_batch, step)["loss"])
        if (step + 1) % CHECKPOINT_EVERY == 0 or step + 1 == steps:
            log.seconds = time.time() - start
            ckpt.save_checkpoint(folder, step + 1, trainer.nets, trainer.optimizer,
                                 {"history": log.history, "seconds": log.seconds})
            ckpt.prune_checkpoints(folder, 2)
            recent = float(np.mean(log.history[-CHECKPOINT_EVERY:]))
            print(f"{name} step {step + 1}/{steps} loss {recent:.4f} ({log.seconds / 60:.1f} min)", flush=True)
        if probe is not None and probe_every and ((step + 1) % probe_every == 0 or step + 1 == steps):
            probe(step + 1)
    return log


# ------------------------------------------------------------------------------ the learning curve
CURVE_SCORES = ("shape", "colour", "background", "size", "place", "background follows", "place follows")


def curve_probe(components: Components, out: Path, seed: int):
    """probe(step) for run_stage: how well the model follows prompts now (40 fresh captions, the context probe),
    appended to out/curve.json (a step already there is skipped, so a resumed run keeps its curve) and drawn."""
    from ..common.files import save_atomic
    from ..sampling import pipeline_from_components
    from .evaluate import context_following, identifier_distance, prompt_following

    path = out / "curve.json"

    def probe(step: int) -> None:
        curve = json.loads(path.read_text()) if path.is_file() else []
        if any(point["step"] == step for point in curve):
            return
        nets = (components.unet, components.text_encoder)
        for net in nets:
            net.set_train(False)
        pipe = pipeline_from_components(components, scheduler=SAMPLER)
        kw = dict(steps=defaults.INFERENCE_STEPS, guidance=defaults.TOY_GUIDANCE)
        scores = {**prompt_following(pipe, seed, n=40, per_shape=2, **kw), **context_following(pipe, seed, **kw)}
        identifier = identifier_distance(components.tokenizer, components.text_encoder)
        for net in nets:
            net.set_train(True)
        curve.append({"step": step, **{k: float(scores[k]) for k in CURVE_SCORES if k in scores},
                      "identifier distance": identifier["identifier distance"],
                      f"{scenes.IDENTIFIER} norm": identifier[f"{scenes.IDENTIFIER} norm"]})
        write_json_atomic(path, curve)
        save_atomic(curve_figure(curve), out / "curve.png")
        print(f"step {step}: " + ", ".join(f"{k} {100 * curve[-1][k]:.0f} %" for k in CURVE_SCORES if k in curve[-1])
              + f", identifier distance {identifier['identifier distance']:.3f}", flush=True)

    return probe


def curve_figure(curve: list[dict]):
    """Prompt following against pretraining steps, one line per score."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    steps = [point["step"] for point in curve]
    for key in CURVE_SCORES:
        if key in curve[0]:
            ax.plot(steps, [100 * point[key] for point in curve], marker="o", label=key)
    ax.set_xlabel("UNet + text encoder steps")
    ax.set_ylabel("judge agrees (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title("Pretraining: prompt following (40 fresh captions; context probe, 8 noises)")
    fig.tight_layout()
    return fig


def to_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float32 in [-1, 1]."""
    return images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0


def encode_latents(vae, images: np.ndarray, batch: int = 250) -> np.ndarray:
    """The VAE's raw mean latents of every picture (the compiled encoder of chapter 02, a fixed batch size)."""
    import mindspore as ms

    encode, _ = vae_cells(vae, scale=1.0)
    vae.set_train(False)
    out = [encode(ms.Tensor(to_pixels(images[i:i + batch]))).asnumpy() for i in range(0, len(images), batch)]
    return np.concatenate(out)


def decode_latents(vae, latents: np.ndarray, batch: int = 250) -> np.ndarray:
    """(N, H, W, 3) uint8 pictures from raw latents (the compiled decoder of chapter 02)."""
    import mindspore as ms

    _, decode = vae_cells(vae, scale=1.0)
    vae.set_train(False)
    out = np.concatenate([decode(ms.Tensor(latents[i:i + batch])).asnumpy() for i in range(0, len(latents), batch)])
    return ((np.clip(out.transpose(0, 2, 3, 1), -1, 1) + 1) * 127.5).round().astype(np.uint8)


def vae_round_trip_agreement(vae, n: int = 500, seed: int = 77) -> dict[str, float]:
    """How often the judge still reads every attribute after pictures go through the VAE and back (and the subject,
    drawn in fresh contexts at every size)."""
    from ..common import judge

    images, _, made = scenes.dataset(n, seed)
    own = set(scenes.SUBJECT_COLOURS)
    anywhere = [scenes.as_subject(s) for s in scenes.scenes(n, seed + 1, shape="star") if s.background not in own]
    subject = np.stack([np.asarray(scenes.draw(s)) for s in anywhere])
    both = decode_latents(vae, encode_latents(vae, np.concatenate([images, subject]), batch=50), batch=50)
    j = judge.load_judge()
    scores = judge.agreement(j.read(list(both[:n])), [judge.replace_said(s) for s in made])
    scores["subject"] = float(np.mean([v.is_subject for v in j.read(list(both[n:]))]))
    return {k: round(v, 3) for k, v in scores.items()}


# ----------------------------------------------------------------------------- stages
def vae_pictures(made: list[scenes.Scene], stripes: float, seed: int) -> np.ndarray:
    """The VAE's pictures: the captioned data's scenes, a share of them striped."""
    return np.stack([np.asarray(scenes.draw(s)) for s in scenes.with_random_stripes(made, stripes, seed + 1)])


def train_vae(vae, images: np.ndarray, args, out: Path) -> StageLog:
    """Stage 1: fit the VAE to the pictures (L1 + a small KL)."""
    vae.set_train(True)
    trainer = stage_trainer(vae_loss_net(vae, args.kl_weight), {"vae": vae}, args.vae_lr, args.vae_steps, 0.0)
    latent = (4, scenes.SIZE // 2, scenes.SIZE // 2)

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 0])
        idx = rng.integers(0, len(images), args.vae_batch)
        return to_pixels(images[idx]), rng.standard_normal((args.vae_batch, *latent), dtype=np.float32)

    return run_stage("vae", trainer, batch, args.vae_steps, out)


def train_decoder(vae, images: np.ndarray, args, out: Path) -> StageLog:
    """Stage 2: the VAE's decoder alone, the encoder frozen (so the latents, and what the UNet learns, stay the same):
    sharper shapes and stripes for little compute, since no gradient flows through the encoder."""
    for name, param in vae.parameters_and_names():
        param.requires_grad = not (name.startswith("encoder.") or name.startswith("quant_conv."))
    vae.set_train(True)
    trainer = stage_trainer(vae_loss_net(vae, 0.0), {"vae": vae}, args.decoder_lr, args.decoder_steps, 0.0)
    latent = (4, scenes.SIZE // 2, scenes.SIZE // 2)

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 2])
        idx = rng.integers(0, len(images), args.vae_batch)
        return to_pixels(images[idx]), rng.standard_normal((args.vae_batch, *latent), dtype=np.float32)

    log = run_stage("decoder", trainer, batch, args.decoder_steps, out)
    for param in vae.get_parameters():
        param.requires_grad = True
    return log


def train_unet(components: Components, latents: np.ndarray, captions: list[str], args, out: Path) -> StageLog:
    """Stage 3: fit UNet + text encoder on cached latents; the caption is dropped args.drop of the time (for guidance)."""
    unet, text_encoder = components.unet, components.text_encoder
    unet.set_train(True)
    text_encoder.set_train(True)
    trainer = stage_trainer(denoise_loss_net(components, args.snr_gamma or None), {"unet": unet, "text_encoder": text_encoder},
                            args.lr, args.unet_steps, 1e-2)
    ids, mask = tokenize_with_mask(components.tokenizer, captions)
    empty, _ = tokenize_with_mask(components.tokenizer, "")
    timesteps = components.noise_scheduler.config.num_train_timesteps
    unused_vae_noise = np.zeros((1,), np.float32)

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 1])
        idx = rng.integers(0, len(latents), args.batch)
        tokens = np.where(rng.random((args.batch, 1)) < args.drop, empty, ids[idx]).astype(np.int32)
        noise = rng.standard_normal((args.batch, *latents.shape[1:]), dtype=np.float32)
        if args.offset_noise:  # a constant per picture and channel (the reference's --offset_noise, 0.1)
            noise += args.offset_noise * rng.standard_normal((args.batch, latents.shape[1], 1, 1), dtype=np.float32)
        t = rng.integers(0, timesteps, args.batch).astype(np.int32)
        return latents[idx], tokens, mask[idx], unused_vae_noise, noise, t

    probe = curve_probe(components, out, args.seed) if args.curve_every else None
    return run_stage("unet", trainer, batch, args.unet_steps, out, probe, args.curve_every)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line settings; the defaults reproduce the committed model."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.toyworld.pretrain", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/toyworld", help="Folder for logs, checkpoints and the model.")
    p.add_argument("--images", type=int, default=50000, help="Pictures in the fixed training set.")
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--vae_steps", type=int, default=1200)
    p.add_argument("--vae_batch", type=int, default=64)
    p.add_argument("--vae_lr", type=float, default=1.5e-3)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--vae_stripes", type=float, default=0.3, help="Share of the VAE's pictures with striped objects "
                   "(a VAE encodes any picture; the captioned data never has stripes).")
    p.add_argument("--decoder_steps", type=int, default=2000, help="Steps of the decoder alone (encoder frozen).")
    p.add_argument("--decoder_lr", type=float, default=5e-4)
    p.add_argument("--unet_steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=8e-4)
    p.add_argument("--drop", type=float, default=0.1, help="Share of empty captions (classifier-free guidance).")
    p.add_argument("--snr_gamma", type=float, default=5.0, help="Min-SNR loss weighting (Hang et al. 2023); 0: none.")
    p.add_argument("--schedule", default="sd", choices=list(SCHEDULES), help="Noise schedule (see SCHEDULES).")
    p.add_argument("--offset_noise", type=float, default=0.0, help="Offset noise scale in the UNet stage (0: none).")
    p.add_argument("--curve_every", type=int, default=1000, help="Measure prompt following every this many UNet "
                   "steps (out/curve.json, out/curve.png); 0: never.")
    p.add_argument("--vae_from", default=None, help="Take the VAE from this model folder (skips the VAE stages).")
    p.add_argument("--unet_from", default=None, help="Start the UNet and text encoder from this model folder (a "
                   "further stage on an earlier model; its tokenizer must be the toy world's).")
    p.add_argument("--unet_channels", type=int, nargs=3, default=list(UNET_CHANNELS), help="A fresh UNet's widths at "
                   "16x16, 8x8 and 4x4 (multiples of 16).")
    p.add_argument("--unet_layers", type=int, default=1, help="A fresh UNet's residual blocks per level.")
    p.add_argument("--named", type=float, default=scenes.NAMED, help="Share of captions naming a thing by a rare word.")
    p.add_argument("--install", action="store_true", help="Copy the result into dreambooth_nb/assets/toyworld.")
    return p.parse_args(argv)


def fit_vae(components: Components, made: list[scenes.Scene], args, out: Path) -> dict:
    """Stages 1 and 2 (VAE, then its decoder alone), unless the VAE came from --vae_from; their logs and round trip."""
    if args.vae_from:
        return dict(vae=StageLog([]), decoder=StageLog([]), round_trip=vae_round_trip_agreement(components.vae))
    pictures = vae_pictures(made, args.vae_stripes, args.seed)
    vae_log = train_vae(components.vae, pictures, args, out)
    print(f"VAE round trip, judge agreement on fresh pictures: {vae_round_trip_agreement(components.vae)}", flush=True)
    decoder_log = train_decoder(components.vae, pictures, args, out)
    round_trip = vae_round_trip_agreement(components.vae)
    print(f"... after the decoder stage: {round_trip}", flush=True)
    return dict(vae=vae_log, decoder=decoder_log, round_trip=round_trip)


def scaled_latents(components: Components, images: np.ndarray, out: Path, keep_scale: bool) -> np.ndarray:
    """Every picture's latents, scaled to unit spread (the factor goes into the VAE's config, unless keep_scale: a VAE
    loaded from a model keeps its own); cached in out/, so a resumed run does not encode again."""
    cache = out / f"latents-{len(images)}.npy"
    if cache.is_file():
        latents = np.load(cache)
    else:
        latents = encode_latents(components.vae, images)
        np.save(cache, latents)
    if not keep_scale:
        components.vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return latents * float(components.vae.config.scaling_factor)


def main(argv=None) -> Path:
    """Pretrain (resuming from out/ when interrupted), save the model and the judge, write the model card."""
    from ..sampling import save_pipeline
    from ..common import judge

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.setup(show=False, seed=args.seed)
    wall, cpu = time.time(), time.process_time()
    components = build_components(out, args.seed, args.schedule, args.vae_from, args.unet_from,
                                  tuple(args.unet_channels), args.unet_layers)
    images, captions, made = scenes.dataset(args.images, args.seed, named=args.named)
    vae = fit_vae(components, made, args, out)
    latents = scaled_latents(components, images, out, keep_scale=bool(args.vae_from))
    del images
    unet_log = train_unet(components, latents, captions, args, out)
    save_pipeline(components, out / "model")
    judge.train_judge().save(out / "judge.npz")
    logs = {"vae": vae["vae"], "decoder": vae["decoder"], "unet": unet_log}
    summary = dict(args=vars(args), vae_round_trip=vae["round_trip"],
                   **{f"{k}_loss": float(np.mean(v.history[-100:])) if v.history else None for k, v in logs.items()},
                   scaling_factor=float(components.vae.config.scaling_factor),
                   stage_s={k: v.seconds for k, v in logs.items()},
                   last_process=dict(wall_s=time.time() - wall, cpu_s=time.process_time() - cpu),
                   world=dict(radii=scenes.RADII, placed_radii=scenes.PLACED_RADII),
                   versions={p: runtime.installed_version(p) for p in ("mindspore", "mindone")})
    write_json_atomic(out / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    if args.install:
        install(out)
    return out


def install(out: Path) -> Path:
    """Copy model, judge and summary from `out` into the package's assets/toyworld folder, measure how well the
    installed model follows prompts (3 seeds), and write its model card."""
    import shutil

    from ..common.assets import toy_world_dir
    from .card import earlier_runs, model_card
    from .evaluate import prompt_following_table

    summary = json.loads((out / "summary.json").read_text())
    summary.setdefault("earlier", earlier_runs(summary["args"]))  # read before the installed model is replaced
    target = toy_world_dir()
    shutil.rmtree(target / "model", ignore_errors=True)
    shutil.copytree(out / "model", target / "model")
    for config in (target / "model").glob("*/config.json"):  # where it was trained is not part of the model
        settings = json.loads(config.read_text())
        settings.pop("_name_or_path", None)
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    shutil.copy2(out / "judge.npz", target / "judge.npz")
    vae = import_quietly("mindone.diffusers").AutoencoderKL.from_pretrained(str(target / "model" / "vae"))
    summary["vae_round_trip"] = vae_round_trip_agreement(vae)  # with the judge as it is now
    summary["evaluation"] = str(prompt_following_table(str(target / "model")))
    write_json_atomic(target / "summary.json", summary)
    (target / "MODEL_CARD.md").write_text(model_card(summary, target / "model"), encoding="utf-8")
    return target


if __name__ == "__main__":
    main()

"""A toy-world SDXL, derived from the toy-world Stable Diffusion and trained further on the toy world with SDXL's
size and crop conditioning.

    python -m dreambooth_nb.sdxl.toy --out outputs/toyworld-xl [--install]

Derived: the SD model's networks are copied where SDXL has the same layers; its text encoder becomes both of
SDXL's (the second with an identity projection, so its pooled output is the SD encoder's); the cross-attention
keys and values read the two encoders' features side by side (the second's weights start at zero); the new
text-time embedding starts at zero. So training starts from a model that already draws the toy world, and learns
what SDXL adds. The stage runs on the training engine's step and checkpoints, and resumes when run again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..common import defaults, runtime, scenes
from ..common.files import write_json_atomic
from ..common.runtime import import_quietly
from ..models import load_components
from .model import SDXLComponents, time_ids
from .training import SDXLDreamBoothLoss

ADDITION_TIME_DIM = 8  # per time id (6 of them): SDXL base uses 256
ORIGINAL_SIZES = (16, 24, 32, 48, 64)  # pixels a toy picture is first drawn at, before it is resized to 32
CROP_MARGIN = 8  # a cropped picture is resized to 32 + 8 px, then cut at a random place


# ------------------------------------------------------------------------------ deriving the SDXL
def sdxl_unet_config(sd_config: dict, text_width: int) -> dict:
    """The SD UNet's config made SDXL: the two encoders' features side by side, and text-time conditioning."""
    config = {k: v for k, v in sd_config.items() if not k.startswith("_")}
    config.update(cross_attention_dim=2 * text_width, addition_embed_type="text_time",
                  addition_time_embed_dim=ADDITION_TIME_DIM,
                  projection_class_embeddings_input_dim=text_width + 6 * ADDITION_TIME_DIM)
    return config


def copy_matching(target, source: dict) -> list[str]:
    """Copy every source weight into the target weight of the same name and shape; returns the names not copied."""
    import mindspore as ms

    left = []
    for name, param in target.parameters_and_names():
        value = source.get(name)
        if value is not None and tuple(value.shape) == tuple(param.shape):
            param.set_data(ms.Tensor(value, dtype=param.dtype))
        else:
            left.append(name)
    return left


def widen_cross_attention(unet, sd_weights: dict) -> None:
    """Cross-attention keys and values of SD (width d) into SDXL's (2d): [W_sd | 0], so the second encoder starts silent;
    the text-time embedding's last layer at zero, so it adds nothing at first."""
    import mindspore as ms

    for name, param in unet.parameters_and_names():
        old = sd_weights.get(name)
        if old is not None and (".attn2.to_k." in name or ".attn2.to_v." in name) and old.shape != tuple(param.shape):
            param.set_data(ms.Tensor(np.concatenate([old, np.zeros_like(old)], axis=1), dtype=param.dtype))
        if name.startswith("add_embedding.linear_2."):
            param.set_data(ms.Tensor(np.zeros(param.shape, np.float32), dtype=param.dtype))


def derive_from_sd(sd_model: str, keep_weights: bool = True) -> SDXLComponents:
    """An SDXL of the SD model's size and knowledge (see the module's docstring). keep_weights=False: the same
    architecture freshly initialised (the SD model's VAE and tokenizer kept), to measure what deriving saves."""
    from transformers import CLIPTextConfig

    diffusers = import_quietly("mindone.diffusers")
    transformers = import_quietly("mindone.transformers")
    sd = load_components(sd_model)
    weights = {n: p.asnumpy() for n, p in sd.unet.parameters_and_names()}
    width = sd.text_encoder.config.hidden_size
    unet = diffusers.UNet2DConditionModel(**sdxl_unet_config(dict(sd.unet.config), width))
    text_config = CLIPTextConfig(**{**sd.text_encoder.config.to_dict(), "projection_dim": width})
    second = transformers.CLIPTextModelWithProjection(text_config)
    if keep_weights:
        import mindspore as ms

        copy_matching(unet, weights)
        widen_cross_attention(unet, weights)
        copy_matching(second, {n: p.asnumpy() for n, p in sd.text_encoder.parameters_and_names()})
        second.text_projection.weight.set_data(ms.Tensor(np.eye(width, dtype=np.float32)))
    else:
        sd.text_encoder = transformers.CLIPTextModel(sd.text_encoder.config)
    return SDXLComponents(sd.tokenizer, sd.text_encoder, sd.vae, unet, diffusers.DDPMScheduler.from_config(
        sd.noise_scheduler.config), sd_model, sd.scheduler_class, sd.tokenizer, second)


DERIVED_NETWORKS = ("unet", "text_encoder", "text_encoder_2")


@contextlib.contextmanager
def derived_weights(pipe, sd_model: str = defaults.TOY_MODEL):
    """Inside the block, the SDXL pipeline's UNet and text encoders hold what deriving from the SD model gives, before
    any training (a few seconds); its own weights come back after. They are written in place, so the sampler the
    pipeline compiled keeps serving (the two have the same architecture)."""
    from ..common.runtime import write_in_place

    derived = derive_from_sd(sd_model)
    saved = {}
    try:
        for name in DERIVED_NETWORKS:
            source = dict(getattr(derived, name).parameters_and_names())
            for key, param in getattr(pipe, name).parameters_and_names():
                saved[(name, key)] = param.asnumpy().copy()
                write_in_place(param, source[key].asnumpy())
        yield pipe
    finally:
        for name in DERIVED_NETWORKS:
            for key, param in getattr(pipe, name).parameters_and_names():
                if (name, key) in saved:
                    write_in_place(param, saved[(name, key)])


# ------------------------------------------------------------------------------ micro-conditioned pictures
def conditioned_picture(scene: scenes.Scene, rng: np.random.Generator,
                        originals=ORIGINAL_SIZES) -> tuple[np.ndarray, np.ndarray]:
    """A toy picture as SDXL's data would give it: drawn at a random original size, resized (and half the time cut
    from a larger resize at a random place); returns the 32 px picture and its time ids."""
    from PIL import Image

    original = int(rng.choice(originals))
    picture = scenes.draw(scene, original)
    if rng.random() < 0.5:
        size = scenes.SIZE + CROP_MARGIN
        top, left = (int(v) for v in rng.integers(0, CROP_MARGIN + 1, 2))
    else:
        size, top, left = scenes.SIZE, 0, 0
    picture = picture.resize((size, size), Image.BICUBIC).crop((left, top, left + scenes.SIZE, top + scenes.SIZE))
    return np.asarray(picture), time_ids((original, original), (top, left), (scenes.SIZE, scenes.SIZE))


def conditioned_dataset(n: int, seed: int, originals=ORIGINAL_SIZES) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n pictures, their time ids and captions; deterministic from the seed."""
    made = scenes.scenes(n, seed)
    rng = np.random.default_rng([seed, 9])
    pairs = [conditioned_picture(s, rng, originals) for s in made]
    return np.stack([p for p, _ in pairs]), np.stack([t for _, t in pairs]), [s.caption() for s in made]


# ------------------------------------------------------------------------------ training further
class XLPretrainLoss(SDXLDreamBoothLoss):
    """SDXL's loss on cached latents with caption dropout: a dropped caption is all zeros (force_zeros_for_empty_prompt)."""

    def construct(self, latents, ids_1, ids_2, keep, noise, timesteps, time_ids):
        a = self.alphas_cumprod[timesteps].reshape(-1, 1, 1, 1)
        embeddings, pooled = self.conditioning(ids_1, ids_2)
        keep_tokens = keep.reshape(-1, 1, 1)
        conditions = {"text_embeds": pooled * keep.reshape(-1, 1), "time_ids": time_ids}
        noisy = a ** 0.5 * latents + (1.0 - a) ** 0.5 * noise
        pred = self.unet(noisy, timesteps, embeddings * keep_tokens, added_cond_kwargs=conditions, return_dict=False)[0]
        return self.objective(pred, latents, noise, a, timesteps)


def train_further(components: SDXLComponents, latents: np.ndarray, ids: np.ndarray, captions_ids: tuple, args,
                  out: Path):
    """The SDXL stage: UNet and both text encoders on cached latents, a tenth of the captions dropped."""
    from ..models import alphas_cumprod
    from ..toyworld.pretrain import run_stage, stage_trainer

    nets = {"unet": components.unet, "text_encoder": components.text_encoder, "text_encoder_2": components.text_encoder_2}
    for net in nets.values():
        net.set_train(True)
        for p in net.get_parameters():
            p.requires_grad = True
    for name, p in components.text_encoder_2.parameters_and_names():
        p.name = f"text_encoder_2.{name}"  # both encoders are CLIP: the optimizer needs distinct names
    loss = XLPretrainLoss(components.unet, None, (components.text_encoder, components.text_encoder_2),
                          alphas_cumprod(components.noise_scheduler), 1.0,
                          components.noise_scheduler.config.prediction_type, False, 1.0, args.snr_gamma or None, True)
    trainer = stage_trainer(loss, nets, args.lr, args.steps, 1e-2)
    tokens, _ = captions_ids
    timesteps = components.noise_scheduler.config.num_train_timesteps

    def batch(i: int):
        rng = np.random.default_rng([args.seed, i, 3])
        idx = rng.integers(0, len(latents), args.batch)
        keep = (rng.random(args.batch) >= args.drop).astype(np.float32)
        noise = rng.standard_normal((args.batch, *latents.shape[1:]), dtype=np.float32)
        t = rng.integers(0, timesteps, args.batch).astype(np.int32)
        return latents[idx], tokens[idx], tokens[idx], keep, noise, t, ids[idx]

    return run_stage("xl", trainer, batch, args.steps, out)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line settings; the defaults reproduce the committed model."""
    p = argparse.ArgumentParser(prog="python -m dreambooth_nb.sdxl.toy", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/toyworld-xl", help="Folder for logs, checkpoints and the model.")
    p.add_argument("--from_model", default=defaults.TOY_MODEL, help="The SD model to derive from.")
    p.add_argument("--images", type=int, default=30000)
    p.add_argument("--seed", type=int, default=defaults.SEED)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--drop", type=float, default=0.1, help="Share of dropped captions (classifier-free guidance).")
    p.add_argument("--snr_gamma", type=float, default=0.0,
                   help="Min-SNR gamma; 0 = off (the SD model's v-prediction gives the noisiest steps no weight under it).")
    p.add_argument("--from_scratch", action="store_true", help="Fresh weights instead of the SD model's (to compare).")
    p.add_argument("--from_xl", default=None,
                   help="Continue from this SDXL folder (an earlier stage's --out/model) instead of deriving anew.")
    p.add_argument("--originals", type=int, nargs="+", default=list(ORIGINAL_SIZES),
                   help="Original sizes (px) the training pictures are drawn at before resizing to 32.")
    p.add_argument("--install", action="store_true", help="Copy the result into dreambooth_nb/assets/toyworld/xl.")
    p.add_argument("--scratch_run", default=None, help="With --install: the --out of a --from_scratch run to compare.")
    return p.parse_args(argv)


def main(argv=None) -> Path:
    """Derive, train further (resuming from out/ when interrupted), save; write the model card."""
    from ..models import tokenize_with_mask
    from ..toyworld.pretrain import encode_latents
    from .model import sdxl_pipeline

    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runtime.setup(show=False, seed=args.seed)
    wall = time.time()
    if args.from_xl:
        from .model import load_sdxl_components

        components = load_sdxl_components(args.from_xl)
    else:
        components = derive_from_sd(args.from_model, keep_weights=not args.from_scratch)
    images, ids, captions = conditioned_dataset(args.images, args.seed, tuple(args.originals))
    latents = encode_latents(components.vae, images) * float(components.vae.config.scaling_factor)
    log = train_further(components, latents, ids, tokenize_with_mask(components.tokenizer, captions), args, out)
    sdxl_pipeline(components).save_pretrained(str(out / "model"))
    summary = dict(args=vars(args), loss=float(np.mean(log.history[-100:])), seconds=log.seconds,
                   last_process_s=time.time() - wall,
                   versions={p: runtime.installed_version(p) for p in ("mindspore", "mindone")})
    write_json_atomic(out / "summary.json", summary)
    print(json.dumps({k: v for k, v in summary.items() if k != "args"}, indent=1))
    if args.install:
        install(out, args.scratch_run)
    return out


def install(out: Path, compared: str | None = None) -> Path:
    """Copy the model and its summary into the package's assets (toyworld/xl), measure how well it follows prompts
    next to the SD toy model (same judge, prompts and seeds), and write its card. `compared`: the folder of a
    --from_scratch run, whose summary (and agreement at its steps) goes into the card too."""
    from ..common.assets import toy_world_dir
    from ..toyworld.evaluate import prompt_following_table
    from .model import load_sdxl_pipeline

    target = toy_world_dir() / "xl"
    shutil.rmtree(target / "model", ignore_errors=True)
    shutil.copytree(out / "model", target / "model")
    for config in (target / "model").glob("*/config.json"):
        settings = json.loads(config.read_text())
        settings.pop("_name_or_path", None)
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    summary = json.loads((out / "summary.json").read_text())
    earlier = summary["args"].get("from_xl")
    if earlier:  # a stage that continued an earlier one: its card tells both
        summary["earlier"] = json.loads((Path(earlier).parent / "summary.json").read_text())
    summary["evaluation"] = str(prompt_following_table(pipe=load_sdxl_pipeline(str(target / "model"))))
    if compared:
        other = json.loads((Path(compared) / "summary.json").read_text())
        other["evaluation"] = str(prompt_following_table(pipe=load_sdxl_pipeline(str(Path(compared) / "model")),
                                                         seeds=(0,)))
        summary["from_scratch"] = other
    write_json_atomic(target / "summary.json", summary)
    (target / "MODEL_CARD.md").write_text(xl_model_card(summary, target / "model"), encoding="utf-8")
    return target


def xl_model_card(summary: dict, model: Path) -> str:
    """MODEL_CARD.md of the toy-world SDXL."""
    from ..toyworld.card import parameters, read_config

    a, unet = summary["args"], read_config(model, "unet")
    stages = [*([summary["earlier"]] if summary.get("earlier") else []), summary]
    commands = "\n".join(f"python -m dreambooth_nb.sdxl.toy --out {s['args']['out']} {stage_flags(s['args'])}"
                         for s in stages) + " --install"
    trained = "; then ".join(
        f"{s['args']['steps']} AdamW steps on {s['args']['images']} pictures drawn at "
        f"{', '.join(map(str, s['args'].get('originals', ORIGINAL_SIZES)))} px, batch {s['args']['batch']}, lr "
        f"{s['args']['lr']} ({s['seconds'] / 60:.0f} min)" for s in stages)
    scratch = summary.get("from_scratch")
    compared = (f"""
## Deriving against training from scratch
The same architecture freshly initialised (`--from_scratch`, {scratch['args']['steps']} steps, same data and settings,
{scratch['seconds'] / 60:.0f} min) follows prompts as below (one seed), against the derived model's table above:

{scratch['evaluation']}
""" if scratch else "")
    return f"""# toy-world-xl: a small Stable Diffusion XL of coloured shapes

The toy world's SDXL: `StableDiffusionXLPipeline` layout (two text encoders, `CLIPTextModel` and
`CLIPTextModelWithProjection`, whose pooled output conditions the UNet with the micro-conditioning time ids through
`addition_embed_type="text_time"`). Chapter 09 and `python -m dreambooth_nb.train_sdxl_lora` use it. Load it with
`db.load_sdxl_pipeline()` or `StableDiffusionXLPipeline.from_pretrained(<this folder>/model)`.

## How it was made
Derived from the toy-world SD model (`dreambooth_nb.sdxl.toy.derive_from_sd`): every UNet weight SDXL shares with SD
copied; the cross-attention keys and values read both encoders' features side by side ({unet['cross_attention_dim']}
wide; the second encoder's half starts at zero); the text-time embedding starts at zero; the second text encoder is
a copy of the first with an identity projection. Then trained further, UNet and both encoders, on toy pictures drawn
at a random original size and resized to {scenes.SIZE} px, half of them cut from a {scenes.SIZE + CROP_MARGIN} px
resize at a random place, each with its time ids (original size, crop top-left, target size), {a['drop']:.0%} of the
captions dropped, Min-SNR gamma {a['snr_gamma']}: {trained}. The second stage added the 8 and 12 px originals, whose
blur survives the VAE (16 px and larger come out of its round trip about as sharp as 64 px). UNet
{parameters(model, 'unet'):,} weights; text encoders {parameters(model, 'text_encoder'):,} +
{parameters(model, 'text_encoder_2'):,}. Final loss {summary['loss']:.4f}; on a shared 2-core CPU, MindSpore
{summary['versions']['mindspore']}, mindone {summary['versions']['mindone']}.

## How well it follows prompts
{summary['evaluation']}
{compared}
## Reproduce
```
{commands}
```
Each stage checkpoints as it goes and resumes when its command is run again with the same `--out`.
"""


def stage_flags(args: dict) -> str:
    """A stage's command-line flags from its summary (the ones that shape the result)."""
    skip = ("out", "install", "from_scratch", "scratch_run")
    return " ".join(f"--{k}" + (" " + " ".join(map(str, v)) if isinstance(v, list) else f"={v}")
                    for k, v in args.items() if k not in skip and v is not None)


def tiny_sdxl_path() -> Path:
    """A tiny random SDXL for tests of the mechanics: derived from tiny-random, not trained; cached."""
    from ..common.assets import is_diffusers_folder
    from ..common.files import cache_dir, replace_dir
    from .model import sdxl_pipeline

    path = cache_dir() / "models" / "tiny-random-xl"
    if not is_diffusers_folder(path):
        staging = path.with_name(f".{path.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        sdxl_pipeline(derive_from_sd(defaults.TINY_MODEL)).save_pretrained(str(staging))
        replace_dir(staging, path)
    return path


if __name__ == "__main__":
    main()

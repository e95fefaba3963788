"""Small Stable Diffusions built offline: the tokenizer writer the toy world shares, and the random tiny model."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .errors import InputError
from .files import replace_dir
from .runtime import import_quietly

TINY_RESOLUTION = 64
TINY_SEED = 0
# Whole words the tiny tokenizer knows as single tokens; anything else (like "sks") splits into pieces.
TINY_WORDS = (
    "a an the photo picture painting drawing of in on at with and by sitting standing lying "
    "dog cat person man woman face portrait woman's star circle square triangle heart "
    "red green blue yellow orange purple white black pink gray background beach snow city forest "
    "bucket hat style van gogh"
).split()


def tiny_vocabulary(words=TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: all bytes, plus merges that make each word one token.

    Each word is first split by the merges it already has (BPE applies them by rank, across words), and gets new
    merges, ranked after all earlier ones, only for what is left: so no word's merges break another's.
    """
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in dict.fromkeys(words):
        pieces = bpe_pieces(word, {rule: rank for rank, rule in enumerate(merges)})
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            tokens.append(pieces[0] + pieces[1])
            pieces = bpe_pieces(word, {rule: rank for rank, rule in enumerate(merges)})
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def bpe_pieces(word: str, ranks: dict[str, int]) -> list[str]:
    """How CLIP's BPE splits `word` with these merges: always the lowest-ranked adjacent pair first."""
    pieces = list(word[:-1]) + [word[-1] + "</w>"]
    while len(pieces) > 1:
        pairs = [(ranks.get(f"{a} {b}"), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:]))]
        found = [(rank, i) for rank, i in pairs if rank is not None]
        if not found:
            break
        _, i = min(found)
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2:]
    return pieces


def write_tokenizer(folder: Path, words=TINY_WORDS, max_length: int = 77):
    """Write vocab.json/merges.txt and save a CLIPTokenizer that knows each of `words` as one token; returns it."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocabulary(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=max_length)
    tokenizer.save_pretrained(str(folder))
    return tokenizer


def tiny_unet_config(sample_size: int = TINY_RESOLUTION // 2) -> dict:
    """The UNet shape of hf-internal-testing/tiny-stable-diffusion-pipe."""
    return dict(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=sample_size,
        in_channels=4, out_channels=4, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def tiny_vae_config() -> dict:
    """A two-level VAE with 4 latent channels: latents are half the image size."""
    return dict(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )


def tiny_text_config(vocab_size: int) -> dict:
    """A 5-layer CLIP text encoder of width 32."""
    return dict(
        bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=32, intermediate_size=37,
        layer_norm_eps=1e-5, num_attention_heads=4, num_hidden_layers=5, vocab_size=vocab_size,
    )


def sd_scheduler_config() -> dict:
    """Stable Diffusion v1's training noise schedule."""
    return dict(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )


# Noise schedules the toy world's pilot compares (toyworld.pilot); each is a change to SD v1's scheduler config.
# "sd": SD v1 as it ships (scaled_linear; terminal SNR 0.0047, so the noisiest latent still shows the picture's mean).
# "zero-snr": the same betas rescaled to zero terminal SNR, v-prediction, trailing timesteps (Lin et al., 2024).
# "cosine-v": the cosine schedule (Nichol & Dhariwal, 2021; terminal SNR 2e-9) with v-prediction, trailing timesteps.
SCHEDULES = {
    "sd": {},
    "zero-snr": dict(rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"),
    "cosine-v": dict(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction", timestep_spacing="trailing"),
}


def schedule_config(schedule: str) -> dict:
    """The scheduler config of a named schedule (SCHEDULES)."""
    if schedule not in SCHEDULES:
        raise InputError(f"Unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}.")
    return {**sd_scheduler_config(), **SCHEDULES[schedule]}


def sd_pipeline(tokenizer, text_encoder, vae, unet):
    """A StableDiffusionPipeline of these networks with SD v1's PNDM sampler (how SD 1.x ships)."""
    diffusers = import_quietly("mindone.diffusers")
    return diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=diffusers.PNDMScheduler.from_config({**sd_scheduler_config(), "skip_prk_steps": True}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_tiny_pipeline(folder: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Build the tiny random Stable Diffusion deterministically from `seed` and save it in diffusers layout."""
    import mindspore as ms
    from transformers import CLIPTextConfig

    diffusers = import_quietly("mindone.diffusers")
    CLIPTextModel = import_quietly("mindone.transformers").CLIPTextModel

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        staging = Path(tmp) / "model"
        tokenizer = write_tokenizer(staging / "tokenizer")
        ms.set_seed(seed)
        unet = diffusers.UNet2DConditionModel(**tiny_unet_config())
        vae = diffusers.AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(len(tokenizer))))
        sd_pipeline(tokenizer, text_encoder, vae, unet).save_pretrained(str(staging))
        replace_dir(staging, folder)
    return folder

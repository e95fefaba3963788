"""Chapter 02: the pieces of Stable Diffusion, loaded from a hub id, a local folder or the embedded default."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .runtime import cache_dir, import_quietly

TINY_MODEL = "tiny-random"  # a randomly initialised tiny SD, built offline in seconds (fast unit tests)
TOY_MODEL = "toy-world"  # the committed SD pretrained on coloured shapes (chapter 06): the notebooks' default
DEFAULT_MODEL = TOY_MODEL
TINY_RESOLUTION = 64
TINY_SEED = 0
# Whole words the tiny tokenizer knows as single tokens; anything else (like "sks") splits into pieces.
TINY_WORDS = (
    "a an the photo picture painting drawing of in on at with and by sitting standing lying "
    "dog cat person man woman face portrait woman's star circle square triangle heart "
    "red green blue yellow orange purple white black pink gray background beach snow city forest "
    "bucket hat style van gogh"
).split()
SUPPORTED_TEXT_ENCODERS = ("CLIPTextModel", "CLIPTextModelWithProjection")


@dataclass
class Components:
    """The five pieces DreamBooth works with."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    source: str = ""

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters in each network."""
        nets = {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}
        return {name: count_parameters(net) for name, net in nets.items() if net is not None}


def count_parameters(net) -> int:
    """Total number of elements in a network's parameters."""
    return int(sum(p.size for p in net.get_parameters()))


# ---------------------------------------------------------------- the embedded tiny model
def tiny_vocabulary(words=TINY_WORDS) -> tuple[dict[str, int], list[str]]:
    """A CLIP-style BPE vocabulary: all bytes, plus merges that make each word one token."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars]
    merges: list[str] = []
    for word in dict.fromkeys(words):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        while len(pieces) > 1:
            merged = pieces[0] + pieces[1]
            rule = f"{pieces[0]} {pieces[1]}"
            if rule not in merges:
                merges.append(rule)
                tokens.append(merged)
            pieces = [merged] + pieces[2:]
    tokens = list(dict.fromkeys(tokens)) + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_tiny_tokenizer(folder: Path, words=TINY_WORDS) -> None:
    """Write vocab.json/merges.txt and save a CLIPTokenizer in `folder`."""
    from transformers import CLIPTokenizer

    vocab, merges = tiny_vocabulary(words)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)
    tokenizer.save_pretrained(str(folder))


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


def build_tiny_pipeline(folder: str | os.PathLike, seed: int = TINY_SEED) -> Path:
    """Build the tiny random Stable Diffusion deterministically from `seed` and save it in diffusers layout."""
    import mindspore as ms
    from transformers import CLIPTextConfig, CLIPTokenizer

    diffusers = import_quietly("mindone.diffusers")
    CLIPTextModel = import_quietly("mindone.transformers").CLIPTextModel

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as tmp:
        staging = Path(tmp) / "model"
        write_tiny_tokenizer(staging / "tokenizer")
        tokenizer = CLIPTokenizer.from_pretrained(str(staging / "tokenizer"))
        ms.set_seed(seed)
        unet = diffusers.UNet2DConditionModel(**tiny_unet_config())
        vae = diffusers.AutoencoderKL(**tiny_vae_config())
        text_encoder = CLIPTextModel(CLIPTextConfig(**tiny_text_config(len(tokenizer))))
        pipe = diffusers.StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=diffusers.PNDMScheduler.from_config({**sd_scheduler_config(), "skip_prk_steps": True}),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(staging))
        replace_dir(staging, folder)
    return folder


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` into place at `target`, replacing what was there, without a half-written moment."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_diffusers_folder(path: Path) -> bool:
    """True when `path` holds a saved pipeline (model_index.json and a unet/ folder)."""
    return (path / "model_index.json").is_file() and (path / "unet").is_dir()


def tiny_model_path(rebuild: bool = False) -> Path:
    """The cached tiny model, built on first use (a few seconds, no network)."""
    path = cache_dir() / "models" / f"{TINY_MODEL}-seed{TINY_SEED}"
    if rebuild or not is_diffusers_folder(path):
        build_tiny_pipeline(path)
    return path


def toy_world_path() -> Path:
    """The committed toy-world model of chapter 06: a small SD pretrained on coloured shapes."""
    from .toyworld import toy_model_path

    return toy_model_path()


EMBEDDED_MODELS = {TOY_MODEL: toy_world_path, TINY_MODEL: tiny_model_path}


def resolve_model(name_or_path: str | os.PathLike | None = None) -> str:
    """A local folder for embedded names and folders; a hub id is returned unchanged for from_pretrained."""
    name = str(name_or_path or DEFAULT_MODEL)
    if name in EMBEDDED_MODELS:
        return str(EMBEDDED_MODELS[name]())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "unet").is_dir():
            raise FileNotFoundError(
                f"{path} is not a Stable Diffusion folder in diffusers layout (no unet/ inside). "
                f"Pass a folder saved with save_pretrained, a hub id such as "
                f"'stable-diffusion-v1-5/stable-diffusion-v1-5', or {TINY_MODEL!r}."
            )
        return str(path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise FileNotFoundError(f"Model folder {name} does not exist. Check the path, or use {TINY_MODEL!r}.")
    return name  # a hub id: from_pretrained downloads it (or reads the hub cache)


def read_subfolder_config(model: str, subfolder: str, revision: str | None = None) -> dict | None:
    """config.json of a component from a local folder or the hub cache; None when it is not there."""
    local = Path(model) / subfolder / "config.json"
    if local.is_file():
        return json.loads(local.read_text(encoding="utf-8"))
    if Path(model).is_dir():
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, f"{subfolder}/config.json", revision=revision)
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8"))
    return None


def model_has_vae(model: str, revision: str | None = None) -> bool:
    """Whether the model has a VAE; asks the hub only when neither a local folder nor the cache can tell."""
    if Path(model).is_dir() or read_subfolder_config(model, "vae", revision) is not None:
        return read_subfolder_config(model, "vae", revision) is not None
    from huggingface_hub import file_exists

    return file_exists(model, "vae/config.json", revision=revision)


def text_encoder_class(model: str, revision: str | None = None):
    """The mindone.transformers class named in the text encoder's config (CLIP only)."""
    config = read_subfolder_config(model, "text_encoder", revision)
    if config is None:
        from transformers import PretrainedConfig

        config = PretrainedConfig.get_config_dict(model, subfolder="text_encoder", revision=revision)[0]
    architecture = (config.get("architectures") or ["CLIPTextModel"])[0]
    if architecture not in SUPPORTED_TEXT_ENCODERS:
        raise ValueError(
            f"{model} uses a {architecture} text encoder; mindone 0.3.0 DreamBooth here supports "
            f"{', '.join(SUPPORTED_TEXT_ENCODERS)} (Stable Diffusion 1.x/2.x). Pick an SD 1.x/2.x model."
        )
    transformers = import_quietly("mindone.transformers")
    return getattr(transformers, architecture)


def load_components(
    model: str | os.PathLike | None = None, revision: str | None = None, variant: str | None = None,
    tokenizer_name: str | None = None,
) -> Components:
    """Tokenizer, text encoder, VAE, UNet and DDPM noise scheduler, from one name or path."""
    from transformers import AutoTokenizer

    diffusers = import_quietly("mindone.diffusers")
    source = resolve_model(model)
    common = dict(revision=revision, variant=variant)
    if tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, revision=revision, use_fast=False)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision, use_fast=False)
    text_encoder = text_encoder_class(source, revision).from_pretrained(source, subfolder="text_encoder", **common)
    vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **common) if model_has_vae(source, revision) else None
    unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
    scheduler = diffusers.DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision)
    return Components(tokenizer, text_encoder, vae, unet, scheduler, source)


def tokenize_with_mask(tokenizer, prompts: list[str] | str, max_length: int | None = None):
    """(token ids, attention mask) padded to the model's length, NumPy int32 arrays of shape (n, length)."""
    import numpy as np

    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    out = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=max_length or tokenizer.model_max_length, return_tensors="np")
    return out.input_ids.astype(np.int32), out.attention_mask.astype(np.int32)


def tokenize(tokenizer, prompts: list[str] | str, max_length: int | None = None):
    """Token ids padded to the model's length, as a NumPy int32 array of shape (n, length)."""
    return tokenize_with_mask(tokenizer, prompts, max_length)[0]


# ------------------------------------------------------------ chapter 02: looking at the pieces
@dataclass(repr=False)
class TokenTable:
    """How a prompt becomes token ids: each token as a string, next to its id."""

    prompt: str
    tokens: list
    ids: list
    padded_length: int

    def rows(self) -> list[tuple[int, str, int]]:
        return list(zip(range(len(self.ids)), self.tokens, self.ids))

    def __repr__(self) -> str:
        return str(self)

    def __str__(self) -> str:
        lines = [f"{i:>3}  {tok:<20} {tid}" for i, tok, tid in self.rows()]
        return "\n".join([f"{self.prompt!r}: {len(self.ids)} tokens, padded to {self.padded_length}", *lines])

    def _repr_html_(self) -> str:
        import html

        cells = "".join(f"<td><code>{html.escape(t)}</code><br><small>{i}</small></td>" for _, t, i in self.rows())
        return (f"<p>{html.escape(repr(self.prompt))}: {len(self.ids)} tokens (then padded to "
                f"{self.padded_length})</p><table><tr>{cells}</tr></table>")


def prompt_tokens(tokenizer, prompt: str) -> TokenTable:
    """The prompt's tokens as strings with their ids, start and end markers included, before padding."""
    ids = list(tokenizer(prompt).input_ids)
    return TokenTable(prompt, tokenizer.convert_ids_to_tokens(ids), ids, tokenizer.model_max_length)


def encode_prompt(components: Components, prompt: str):
    """The text encoder's output for one prompt (a compiled call): a (1, length, width) NumPy array."""
    import mindspore as ms

    ids = ms.Tensor(tokenize(components.tokenizer, prompt))
    return components.text_encoder(ids)[0].asnumpy()


def vae_factor(components: Components) -> int:
    """How many pixels one latent position covers per side (1 for a model without VAE)."""
    return downsampling_factor(components.vae.config if components.vae is not None else None)


def downsampling_factor(vae_config) -> int:
    """Pixels per latent position per side, from a VAE config (each block after the first halves the size)."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1) if vae_config else 1


def native_resolution(name_or_path: str | os.PathLike | None = None, fallback: int = 512) -> int:
    """The image size a model was built for, read from its config files (fallback when they are not local)."""
    if str(name_or_path or DEFAULT_MODEL) == TINY_MODEL:
        return TINY_RESOLUTION  # known without building it (building runs MindSpore before setup())
    folder = resolve_model(name_or_path)
    unet, vae = read_subfolder_config(folder, "unet"), read_subfolder_config(folder, "vae")
    if not unet or "sample_size" not in unet:
        return fallback
    return int(unet["sample_size"]) * downsampling_factor(vae)


def model_resolution(components: Components) -> int:
    """The image size the model was built for: UNet sample size x the VAE's downsampling factor."""
    return int(components.unet.config.sample_size * vae_factor(components))


def vae_cells(vae):
    """Two Cells, compiled on first call in GRAPH mode: pixels -> scaled latents (the mean) and back."""
    from mindspore import nn, ops

    scale = float(vae.config.scaling_factor)

    class Encode(nn.Cell):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def construct(self, pixels):
            mean, _ = ops.chunk(self.vae.encode(pixels)[0], 2, axis=1)
            return mean * scale

    class Decode(nn.Cell):
        def __init__(self):
            super().__init__()
            self.vae = vae

        def construct(self, latents):
            return self.vae.decode(latents / scale)[0]

    return Encode(), Decode()


@dataclass(repr=False)
class RoundTrip:
    """A photo, its VAE latents and the VAE's reconstruction of it."""

    image: Any
    latents: Any  # (channels, h, w) NumPy array
    reconstruction: Any

    def panels(self) -> tuple[list, list[str]]:
        """Pictures and titles: photo, each latent channel (rescaled to [0, 1], shown as a heat map), reconstruction."""
        import numpy as np

        lo, hi = self.latents.min(axis=(1, 2), keepdims=True), self.latents.max(axis=(1, 2), keepdims=True)
        channels = list((self.latents - lo) / np.maximum(hi - lo, 1e-8))
        h, w = self.latents.shape[1:]
        titles = [f"photo {self.image.width}x{self.image.height}"]
        titles += [f"latent {i} ({h}x{w})" for i in range(len(channels))] + ["decoded"]
        return [self.image, *channels, self.reconstruction], titles

    def __repr__(self) -> str:
        return f"RoundTrip(photo {self.image.size}, latents {self.latents.shape}, decoded {self.reconstruction.size})"

    def show(self):
        from .viz import show_images

        images, titles = self.panels()
        return show_images(images, titles=titles, ncols=len(images))


def vae_round_trip(components: Components, image, resolution: int | None = None) -> RoundTrip:
    """Encode a photo to latents and decode it again with the model's VAE (compiled calls)."""
    import mindspore as ms

    from . import data
    from .viz import to_pil

    if components.vae is None:
        raise ValueError(f"{components.source} has no VAE (no vae/ folder): its UNet works on pixels directly.")
    resolution = resolution or model_resolution(components)
    photo = data.crop(data.resize_shorter(image, resolution), resolution)
    encode, decode = vae_cells(components.vae)
    latents = encode(ms.Tensor(data.normalize(photo)[None]))
    decoded = decode(latents).asnumpy()[0]
    return RoundTrip(photo, latents.asnumpy()[0], to_pil(data.denormalize(decoded)))


def alphas_cumprod(scheduler):
    """ᾱ_t of the noise schedule as a NumPy array: the share of signal variance left at step t."""
    import numpy as np

    values = scheduler.alphas_cumprod
    return np.asarray(values.asnumpy() if hasattr(values, "asnumpy") else values, dtype=np.float64)


def plot_noise_schedule(scheduler, ax=None):
    """Signal √ᾱ_t and noise √(1-ᾱ_t) against the timestep t; returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    a = alphas_cumprod(scheduler)
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    ax.plot(np.sqrt(a), label="signal  √ᾱ_t")
    ax.plot(np.sqrt(1 - a), label="noise  √(1-ᾱ_t)")
    ax.plot(a, "--", label="ᾱ_t")
    ax.set_xlabel("timestep t")
    ax.set_title(f"{type(scheduler).__name__}: {scheduler.config.beta_schedule}, {len(a)} steps")
    ax.legend()
    ax.figure.tight_layout()
    return ax.figure


def noised_versions(components: Components, image, timesteps, seed: int = 0, resolution: int | None = None) -> list:
    """The photo as the forward process makes it at each timestep: √ᾱ_t·x + √(1-ᾱ_t)·ε (one ε, in pixels)."""
    import numpy as np

    from . import data
    from .viz import to_pil

    resolution = resolution or model_resolution(components)
    x = data.normalize(data.crop(data.resize_shorter(image, resolution), resolution))
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    a = alphas_cumprod(components.noise_scheduler)
    return [to_pil(data.denormalize(np.sqrt(a[t]) * x + np.sqrt(1 - a[t]) * noise)) for t in timesteps]

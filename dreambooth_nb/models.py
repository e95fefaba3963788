"""Chapter 02: the pieces of Stable Diffusion, loaded from a hub id, a local folder or the embedded default."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .common.assets import SUPPORTED_TEXT_ENCODERS, downsampling_factor, read_subfolder_config, resolve_model
from .common.runtime import import_quietly
from .common.tables import Table
from .common.errors import InputError, MissingFileError

@dataclass
class Components:
    """The five pieces DreamBooth works with."""

    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    noise_scheduler: Any
    source: str = ""
    scheduler_class: str = "PNDMScheduler"  # the sampler the model ships with (saved pipelines keep it)

    def parameter_counts(self) -> dict[str, int]:
        """Number of parameters in each network."""
        nets = {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet}
        return {name: count_parameters(net) for name, net in nets.items() if net is not None}


def count_parameters(net) -> int:
    """Total number of elements in a network's parameters."""
    return int(sum(p.size for p in net.get_parameters()))


def same_weights(a, b) -> bool:
    """Whether two networks hold the same parameters, name by name and value by value."""
    ours, theirs = dict(a.parameters_and_names()), dict(b.parameters_and_names())
    return ours.keys() == theirs.keys() and all(np.array_equal(ours[k].asnumpy(), theirs[k].asnumpy()) for k in ours)


# ---------------------------------------------------------------- loading
MODEL_PARTS = ("unet", "text_encoder", "tokenizer", "scheduler")  # a VAE is optional (pixel-space models)


def require_model_parts(source: str, tokenizer_name: str | None = None, sdxl: bool = False) -> None:
    """A local model folder must hold every part DreamBooth loads; one line names what is missing."""
    folder = Path(source)
    if not folder.is_dir():
        return
    wanted = [p for p in MODEL_PARTS if not (p == "tokenizer" and tokenizer_name)]
    if sdxl is False and (folder / "text_encoder_2").is_dir():
        raise MissingFileError(f"{folder} is a Stable Diffusion XL model (it has text_encoder_2/): train it with "
                                f"python -m dreambooth_nb.train_sdxl_lora, sample it with db.load_sdxl_pipeline.")
    missing = [p for p in wanted if not (folder / p).is_dir()]
    if missing:
        raise MissingFileError(f"{folder} has no {', '.join(p + '/' for p in missing)} folder: a Stable Diffusion "
                                f"model in diffusers layout holds {', '.join(MODEL_PARTS)} (and vae). Save the whole "
                                f"pipeline with save_pretrained, or give a hub id.")


def hub_access(source: str, revision: str | None = None) -> dict:
    """For a hub id: {} when the hub answers; {"local_files_only": True} when it does not but the model is in the
    hub cache (no minute of retries); one clear error when neither. {} for local folders."""
    from .common.hub import is_hub_id, offline_reason

    if Path(source).is_dir() or not is_hub_id(source):
        return {}
    reason = offline_reason()
    if reason is None:
        return {}
    if read_subfolder_config(source, "unet", revision) is not None:
        return {"local_files_only": True}
    raise MissingFileError(f"Cannot download {source} because {reason}, and it is not in the hub cache. Download it "
                            f"on a connected machine (huggingface-cli download {source}) or give a local folder.")


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
        raise InputError(
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
    require_model_parts(source, tokenizer_name)
    common = dict(revision=revision, variant=variant, **hub_access(source, revision))
    offline = {"local_files_only": True} if common.get("local_files_only") else {}
    if tokenizer_name:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_name, revision=revision, use_fast=False, **offline)
    else:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer", revision=revision, use_fast=False, **offline)
    text_encoder = text_encoder_class(source, revision).from_pretrained(source, subfolder="text_encoder", **common)
    vae = diffusers.AutoencoderKL.from_pretrained(source, subfolder="vae", **common) if model_has_vae(source, revision) else None
    unet = diffusers.UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
    scheduler = diffusers.DDPMScheduler.from_pretrained(source, subfolder="scheduler", revision=revision, **offline)
    sampler = diffusers.DDPMScheduler.load_config(source, subfolder="scheduler", revision=revision,
                                                  **offline).get("_class_name", "")
    sampler = sampler if hasattr(diffusers, sampler) else "PNDMScheduler"
    return Components(tokenizer, text_encoder, vae, unet, scheduler, source, sampler)


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
class TokenTable(Table):
    """How a prompt becomes token ids: each token as a string, next to its id."""

    prompt: str
    tokens: list
    ids: list
    padded_length: int
    header = ("position", "token", "id")

    @property
    def caption(self) -> str:
        return f"{self.prompt!r}: {len(self.ids)} tokens, padded to {self.padded_length}"

    def rows(self) -> list[tuple[int, str, int]]:
        return list(zip(range(len(self.ids)), self.tokens, self.ids))

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


def model_resolution(components: Components) -> int:
    """The image size the model was built for: UNet sample size x the VAE's downsampling factor."""
    return int(components.unet.config.sample_size * vae_factor(components))


def vae_cells(vae, scale: float | None = None):
    """Two Cells, compiled on first call in GRAPH mode: pixels -> latents (the mean, times `scale`) and back.

    scale: the VAE's scaling_factor when None (what the UNet sees); 1.0 gives the raw latents.
    """
    from mindspore import nn, ops

    scale = float(vae.config.scaling_factor if scale is None else scale)

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
        from .common.viz import show_images

        images, titles = self.panels()
        return show_images(images, titles=titles, ncols=len(images))


def vae_round_trip(components: Components, image, resolution: int | None = None) -> RoundTrip:
    """Encode a photo to latents and decode it again with the model's VAE (compiled calls)."""
    import mindspore as ms

    from . import data
    from .common.viz import to_pil

    if components.vae is None:
        raise InputError(f"{components.source} has no VAE (no vae/ folder): its UNet works on pixels directly.")
    resolution = resolution or model_resolution(components)
    photo = data.crop(data.resize_shorter(image, resolution), resolution)
    encode, decode = vae_cells(components.vae)
    latents = encode(ms.Tensor(data.normalize(photo)[None]))
    decoded = decode(latents).asnumpy()[0]
    return RoundTrip(photo, latents.asnumpy()[0], to_pil(data.denormalize(decoded)))


def alphas_cumprod(scheduler):
    """ᾱ_t of the noise schedule as a float32 NumPy array: the share of signal variance left at step t."""
    import numpy as np

    values = scheduler.alphas_cumprod
    return np.asarray(values.asnumpy() if hasattr(values, "asnumpy") else values, dtype=np.float32)


def add_noise(x, noise, alpha_bar):
    """The forward process in one line: x_t = √ᾱ_t · x + √(1-ᾱ_t) · ε.

    Works on NumPy arrays and on MindSpore tensors alike (training compiles this same line);
    alpha_bar broadcasts against x (one value per example: shape (B, 1, 1, 1)).
    """
    return alpha_bar ** 0.5 * x + (1.0 - alpha_bar) ** 0.5 * noise


def plot_noise_schedule(scheduler, ax=None):
    """How much of the picture (√ᾱ_t) and of the noise (√(1-ᾱ_t)) a noised sample holds at each timestep t: the
    schedule training noises with, and every sampler steps back through. Returns the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    a = alphas_cumprod(scheduler)
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 3))
    ax.plot(np.sqrt(a), label="picture  √ᾱ_t")
    ax.plot(np.sqrt(1 - a), label="noise  √(1-ᾱ_t)")
    ax.plot(a, "--", label="ᾱ_t (signal share of the variance)")
    ax.set_xlabel("timestep t")
    ax.set_ylabel("weight in x_t = √ᾱ_t·x + √(1-ᾱ_t)·ε")
    zero = ", rescaled to zero terminal SNR" if scheduler.config.get("rescale_betas_zero_snr") else ""
    ax.set_title(f"the noise schedule: {scheduler.config.beta_schedule} betas "
                 f"{scheduler.config.beta_start:g}-{scheduler.config.beta_end:g}{zero}, {len(a)} timesteps", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def noised_versions(components: Components, image, timesteps, seed: int = 0, resolution: int | None = None) -> list:
    """The photo as the forward process makes it at each timestep: √ᾱ_t·x + √(1-ᾱ_t)·ε (one ε, in pixels)."""
    import numpy as np

    from . import data
    from .common.viz import to_pil

    resolution = resolution or model_resolution(components)
    x = data.normalize(data.crop(data.resize_shorter(image, resolution), resolution))
    noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    a = alphas_cumprod(components.noise_scheduler)
    return [to_pil(data.denormalize(add_noise(x, noise, a[t]))) for t in timesteps]


def noise_scheduler(schedule: str = "sd"):
    """A training noise schedule by name (common.tiny_model.SCHEDULES: "sd" is Stable Diffusion v1's, "zero-snr"
    the same betas rescaled to zero terminal SNR with v-prediction)."""
    from .common.tiny_model import schedule_config

    return import_quietly("mindone.diffusers").DDPMScheduler.from_config(schedule_config(schedule))


@dataclass(repr=False)
class LastTimestep(Table):
    """What each schedule leaves of the picture at its last training timestep, and whether the background shows."""

    ends: dict  # schedule name -> {"kept", "snr", "gap", "spread", "prediction"}
    backgrounds: tuple
    header = ("schedule", "picture kept at t = T (√ᾱ_T)", "terminal SNR", "background in the mean (gap / noise)",
              "UNet predicts")

    @property
    def caption(self) -> str:
        first, second = self.backgrounds
        return (f"the same picture on a {first} and on a {second} background, noised to the last timestep with one ε: "
                f"the gap between the two latents' channel means, against the spread noise alone gives that mean")

    def rows(self) -> list[tuple]:
        return [(name, f"{e['kept']:.3f}", f"{e['snr']:.2g}", f"{e['gap']:.3f} / {e['spread']:.3f} = {e['gap'] / e['spread']:.1f}",
                 e["prediction"]) for name, e in self.ends.items()]


def last_timestep(components: Components, schedulers: dict, backgrounds=("blue", "yellow")) -> LastTimestep:
    """For each named scheduler: √ᾱ_T and the SNR at the last timestep T, and how far apart the channel means of
    two noised latents are (one red circle on two backgrounds, the same ε), next to the spread of a channel mean
    that the noise alone gives (√(1-ᾱ_T)/√(pixels of a latent channel)): above about 1, the noisiest latent still says
    which background it came from, and a model learns to read it there instead of from the words."""
    import mindspore as ms
    import numpy as np

    from . import data
    from .common import scenes
    from .common.viz import to_pil

    size = model_resolution(components)
    pictures = [scenes.draw(scenes.Scene("circle", "red", b, 8.0, size / 2, size / 2, 0.0), size) for b in backgrounds]
    encode, _ = vae_cells(components.vae)
    latents = encode(ms.Tensor(np.stack([data.normalize(to_pil(p)) for p in pictures]))).asnumpy()
    noise = np.random.default_rng(0).standard_normal(latents.shape[1:]).astype(np.float32)
    ends = {}
    for name, scheduler in schedulers.items():
        a = float(alphas_cumprod(scheduler)[-1])
        noisy = add_noise(latents, noise, a)
        gap = float(np.abs(noisy[0].mean((1, 2)) - noisy[1].mean((1, 2))).max())
        ends[name] = dict(kept=a ** 0.5, snr=a / (1 - a), gap=gap, spread=(1 - a) ** 0.5 / np.sqrt(latents[0, 0].size),
                          prediction=scheduler.config.prediction_type)
    return LastTimestep(ends, tuple(backgrounds))


# ------------------------------------------------------------ chapter 02: the identifier
@dataclass(repr=False)
class IdentifierReport(Table):
    """What the model knows of a would-be identifier: its tokens, how often training saw it, its embedding."""

    identifier: str
    tokens: list
    seen_in_training: int | None  # times in the pretraining captions (None: unknown, e.g. a hub model)
    norm: float  # length of its input embedding (one token) or the mean over its tokens
    typical_norm: float  # the same for the words training did see
    nearest: list  # the vocabulary's words whose embeddings point the most the same way
    header = ("question", "answer")

    @property
    def caption(self) -> str:
        return f"the identifier {self.identifier!r}"

    def rows(self) -> list[tuple[str, str]]:
        seen = "unknown (the captions are not shipped with the model)" if self.seen_in_training is None else str(self.seen_in_training)
        return [("tokens", " ".join(self.tokens)), ("one token?", "yes" if len(self.tokens) == 1 else "no"),
                ("times in the pretraining captions", seen),
                ("length of its input embedding", f"{self.norm:.2f} (words the model learned: {self.typical_norm:.2f} on average)"),
                ("nearest words by embedding", ", ".join(self.nearest))]


def inspect_identifier(components: Components, identifier: str = "sks", captions: list[str] | None = None,
                       vocabulary: list[str] | None = None) -> IdentifierReport:
    """How `identifier` tokenizes, how often `captions` (the pretraining captions, when known) use it, and where its
    embedding sits among the words of `vocabulary` (default: the words in the captions)."""
    import numpy as np

    tokenizer = components.tokenizer
    table = components.text_encoder.get_input_embeddings().embedding_table.asnumpy()
    ids = tokenizer(identifier, add_special_tokens=False).input_ids
    words = vocabulary or sorted({w for c in (captions or []) for w in c.split()} - {identifier})
    word_ids = {w: tokenizer(w, add_special_tokens=False).input_ids for w in words}
    single = {w: i[0] for w, i in word_ids.items() if len(i) == 1}
    vector = table[ids].mean(0)
    unit = table / np.maximum(np.linalg.norm(table, axis=1, keepdims=True), 1e-8)
    closeness = {w: float(unit[i] @ vector / max(np.linalg.norm(vector), 1e-8)) for w, i in single.items()}
    seen = None if captions is None else sum(c.split().count(identifier) for c in captions)
    typical = float(np.mean([np.linalg.norm(table[i]) for i in single.values()])) if single else float("nan")
    return IdentifierReport(identifier, tokenizer.convert_ids_to_tokens(ids), seen, float(np.linalg.norm(vector)),
                            typical, sorted(closeness, key=closeness.get, reverse=True)[:5])

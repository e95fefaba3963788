"""What a trained model says about itself, written into its output folder at the end of training:
run_card.json (exactly how it was made: the settings, versions, device, seed, data digests, final losses) and
README.md (a Hugging Face model card: how it was trained, how to load it with mindone, how to export it for
PyTorch). Both work offline; neither ever holds the hub token."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import time
from pathlib import Path

from . import defaults
from .config import LoraTrainConfig, SDXLLoraTrainConfig, any_config_names_with
from .files import file_hash, write_json_atomic, write_text_atomic
from .formats import LORA_FILES

RUN_CARD = "run_card.json"
MODEL_CARD = "README.md"
SAMPLE_IMAGES = ("samples.png", "before_after.png")  # a before/after grid, when the run left one
CARD_TAGS = ["dreambooth", "mindspore", "mindone", "text-to-image"]
VERSIONED = ("mindspore", "mindone", "transformers", "dreambooth-nb")
LOSS_TERMS = ("loss", "instance_loss", "prior_loss")
RECENT_SHARE = 0.2  # final losses are the mean over the last 20 % of the steps (one step's loss is mostly noise)
def weights_in(folder: str | os.PathLike) -> int:
    """How many numbers the safetensors files under a model folder hold (its parameter count), read from their headers."""
    from safetensors import safe_open

    total = 0
    for path in Path(folder).rglob("*.safetensors"):
        with safe_open(str(path), framework="np") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    return total


def embedded_description(name: str) -> str | None:
    """How a card names an embedded base model (None for any other); the toy world's size counted from its weights."""
    from .assets import toy_model_path

    if name == defaults.TOY_MODEL:
        millions = weights_in(toy_model_path()) / 1e6
        return (f"the toy-world model shipped with dreambooth-nb (a {millions:.1f} M-parameter Stable Diffusion of "
                f"coloured shapes, 32 px)")
    if name == defaults.TINY_MODEL:
        return "the tiny random Stable Diffusion of dreambooth-nb's tests (untrained; mechanics only)"
    return None


# --------------------------------------------------------------------------- run_card.json
def shareable_settings(config) -> dict:
    """A TrainConfig (or its dict) as a plain dict without the secret settings (the hub token)."""
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    secret = any_config_names_with("secret")  # never written anywhere
    return {name: value for name, value in values.items() if name not in secret}


def recent_mean(history: list[dict], term: str = "loss", share: float = RECENT_SHARE) -> float | None:
    """The mean of one loss term over the last `share` of the steps (None when no step recorded it)."""
    tail = history[-max(1, math.ceil(len(history) * share)):] if history else []
    values = [r[term] for r in tail if r.get(term) is not None]
    return float(sum(values) / len(values)) if values else None


def image_files(folder: str | os.PathLike | None) -> list[Path]:
    """The picture files of a folder (by the extensions PIL reads), sorted by name, hidden files skipped."""
    from PIL import Image

    if not folder or not Path(folder).is_dir():
        return []
    suffixes = set(Image.registered_extensions())
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)


def images_digest(paths: list) -> str | None:
    """sha256 over the sorted (file name, content hash) pairs: equal for the same pictures under the same names."""
    if not paths:
        return None
    digest = hashlib.sha256()
    for path in sorted(map(Path, paths), key=lambda p: p.name):
        digest.update(f"{path.name}\t{file_hash(path)}\n".encode())
    return digest.hexdigest()


def training_images(config, images: dict | None = None) -> dict[str, list[Path]]:
    """The instance and class pictures of a run: `images` when the trainer passes the ones it used, else its folders."""
    from .assets import subject_photos_dir

    settings = shareable_settings(config)
    found = dict(images or {})
    if "instance" not in found:
        found["instance"] = image_files(settings.get("instance_data_dir") or subject_photos_dir())
    if "class" not in found:
        used = settings.get("with_prior_preservation")
        found["class"] = image_files(settings.get("class_data_dir"))[:settings.get("num_class_images")] if used else []
    return {name: [Path(p) for p in paths] for name, paths in found.items()}


def data_entry(paths: list[Path]) -> dict | None:
    """Folder, count and digest of one set of pictures (None for an empty set)."""
    if not paths:
        return None
    return {"folder": str(paths[0].parent), "count": len(paths), "sha256": images_digest(paths)}


def package_versions() -> dict[str, str]:
    """Installed versions of the stack a model was trained with."""
    from .runtime import installed_version

    return {name: installed_version(name) for name in VERSIONED}


def sample_image(output_dir: str | os.PathLike) -> str | None:
    """The relative path of the run's before/after grid, when it left one."""
    return next((name for name in SAMPLE_IMAGES if (Path(output_dir) / name).is_file()), None)


def run_card(config, history: list[dict], *, steps_done: int, device: str, seed: int | None,
             images: dict | None = None, output_dir: str | os.PathLike | None = None) -> dict:
    """Everything needed to say how a model was made (settings without the token, versions, data, losses)."""
    sets = training_images(config, images)
    output_dir = output_dir or shareable_settings(config).get("output_dir")
    return {
        "config": shareable_settings(config),
        "versions": package_versions(),
        "device": device,
        "seed": seed,
        "data": {"instance_images": data_entry(sets["instance"]), "class_images": data_entry(sets["class"])},
        "steps_done": steps_done,
        "final_loss": {term: recent_mean(history, term) for term in LOSS_TERMS},
        "final_loss_over_steps": max(1, math.ceil(len(history) * RECENT_SHARE)) if history else 0,
        "sample_image": sample_image(output_dir) if output_dir else None,
        "command": reproducing_command(config),
        **result_facts(config),
        "written_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def result_facts(config) -> dict:
    """What the run leaves and which pipeline class reads it: {'result_kind': 'pipeline' | 'adapters',
    'pipeline_class': ...} (for a plain dict of settings: a whole Stable Diffusion pipeline)."""
    xl = isinstance(config, SDXLLoraTrainConfig)
    return {"result_kind": "adapters" if isinstance(config, LoraTrainConfig) else "pipeline",
            "pipeline_class": "StableDiffusionXLPipeline" if xl else "StableDiffusionPipeline"}


def write_run_card(output_dir: str | os.PathLike, config, history: list[dict], *, steps_done: int, device: str,
                   seed: int | None, images: dict | None = None) -> Path:
    """Write output_dir/run_card.json and the model card output_dir/README.md (both atomic); returns run_card.json.

    `images` may give the pictures training used, {"instance": [paths], "class": [paths]}; by default they are
    read from the config's folders.
    """
    output_dir = Path(output_dir)
    card = run_card(config, history, steps_done=steps_done, device=device, seed=seed, images=images,
                    output_dir=output_dir)
    path = write_json_atomic(output_dir / RUN_CARD, card)
    write_text_atomic(output_dir / MODEL_CARD, model_card_text(card, output_dir))
    return path


# --------------------------------------------------------------------------- README.md (the model card)
def base_model_facts(name: str) -> dict:
    """What the card says about the base model: its hub id (when it has one), a description, its license."""
    from .assets import base_model_of, is_toy_model
    from .hub import is_hub_id

    name = str(name or defaults.DEFAULT_MODEL)
    root = base_model_of(name)  # a fine-tuned folder counts as the model it was trained from
    chained = root != name
    on_hub = is_hub_id(root) and not Path(root).expanduser().exists()
    if is_toy_model(root):
        root = defaults.TOY_MODEL
    described = embedded_description(root) or (f"[{root}](https://huggingface.co/{root})" if on_hub else
                                                    f"the local model `{Path(root).name}`")
    if chained:
        described = f"the local model `{Path(name).name}`, itself fine-tuned from {described}"
    return {"description": described, "base_model": root if on_hub else None,
            **base_model_license(root, on_hub)}


def base_model_license(model: str, on_hub: bool) -> dict:
    """license (and license_name/license_link for 'other') from the base model's own card, when readable offline
    (a local folder's README.md, or the hub cache's copy for a hub id)."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    readme = Path(model).expanduser() / "README.md"
    if on_hub:
        cached = try_to_load_from_cache(model, "README.md")
        readme = Path(cached) if isinstance(cached, str) else None
    if readme is None or not readme.is_file():
        return {}
    try:
        data = ModelCard.load(readme).data.to_dict()
    except Exception:  # a card without readable YAML says nothing about the license
        return {}
    return {key: data[key] for key in ("license", "license_name", "license_link") if data.get(key)}


def card_metadata(card: dict, base: dict):
    """The YAML header of the model card (ModelCardData)."""
    from huggingface_hub import ModelCardData

    extra = {key: base[key] for key in ("license_name", "license_link") if key in base}
    return ModelCardData(base_model=base.get("base_model"), license=base.get("license"), tags=list(CARD_TAGS),
                         instance_prompt=card["config"].get("instance_prompt"), **extra)


def shown_settings(config: dict) -> list[tuple[str, str]]:
    """The settings a reader of the card wants, as (flag, `value`); the class settings only with prior preservation."""
    prior_only = ("class_prompt", "prior_loss_weight", "num_class_images")
    return [(name, f"`{config[name]}`") for name in any_config_names_with("shown") if config.get(name) is not None
            and (config.get("with_prior_preservation") or name not in prior_only)]


def settings_table(card: dict, base: dict) -> str:
    """The key settings of the run as a Markdown table."""
    over = card["final_loss_over_steps"]
    losses = [(f"final {term.replace('_', ' ')} (mean of the last {over} steps)", f"{value:.4f}")
              for term, value in card["final_loss"].items() if value is not None]
    rows = [("base model", base["description"]), ("steps done", card["steps_done"]), *shown_settings(card["config"]),
            ("seed", card["seed"]), ("device", card["device"]), *losses,
            ("versions", ", ".join(f"{k} {v}" for k, v in card["versions"].items()))]
    return "| setting | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def reproducing_command(config) -> str | None:
    """The `python -m dreambooth_nb.train ...` command of a TrainConfig, without the token (None for a plain dict)."""
    if not dataclasses.is_dataclass(config):
        return None
    return dataclasses.replace(config, **{name: None for name in any_config_names_with("secret")}).command()


def export_commands(folder: str, hub_id: str | None) -> str:
    """The shell lines that export the model for PyTorch (downloading it first when it lives on the hub)."""
    name = Path(hub_id).name if hub_id else folder
    download = f"huggingface-cli download {hub_id} --local-dir {name}\n" if hub_id else ""
    return (f"{download}python -m dreambooth_nb.export {name} --to diffusers-pt {name}-pt\n"
            f"python -m dreambooth_nb.export {name} --to single-file {Path(name).name}.safetensors  "
            f"# one file, original SD layout")


CPU_SAMPLER_NOTE = (
    "On a CPU, a model saved with `DDPMScheduler` stops with `The kernel NonZeroExt unregistered` (mindone 0.3.0's "
    "DDPM sampler needs a kernel MindSpore's CPU build lacks): swap the sampler first, `from mindone.diffusers import "
    "DPMSolverMultistepScheduler; pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)`.")


def adapter_use(card: dict, base: dict, where: str) -> str:
    """The card's "use it" sections for LoRA adapters: load the base model, then the adapters, on either stack."""
    pipeline = card.get("pipeline_class", "StableDiffusionPipeline")
    prompt = card["config"].get("instance_prompt") or "a photo of sks dog"
    name = card["config"].get("pretrained_model_name_or_path")
    base_id = base.get("base_model") or name
    embedded = base_id in defaults.EMBEDDED_MODELS
    load = (f"import dreambooth_nb as db\n\npipe = db.load_pipeline(\"{base_id}\")  # the embedded base model"
            if embedded else f"from mindone.diffusers import {pipeline}\n\npipe = {pipeline}.from_pretrained(\"{base_id}\")")
    return f"""
## Use it with MindSpore (mindone)

This folder holds LoRA adapters (`pytorch_lora_weights.safetensors`), not a whole model: load the base model it was
trained on, {base["description"]}, then the adapters into it.

```python
{load}
pipe.load_lora_weights("{where}")  # offline (HF_HUB_OFFLINE=1): add weight_name="{LORA_FILES[0]}"
image = pipe("{prompt}")[0][0]
```

{CPU_SAMPLER_NOTE}

## Use it with diffusers on PyTorch

The adapter file uses diffusers' own key names, so diffusers (with peft) loads it as it is: no export is needed.

```python
from diffusers import {pipeline}

pipe = {pipeline}.from_pretrained("<the base model in diffusers layout>")
pipe.load_lora_weights("{where}")  # offline (HF_HUB_OFFLINE=1): add weight_name="{LORA_FILES[0]}"
image = pipe("{prompt}").images[0]
```
"""


def model_card_text(card: dict, output_dir: str | os.PathLike | None = None) -> str:
    """README.md for a run card: YAML metadata, how the model was trained, how to load (and export) it."""
    from huggingface_hub import ModelCard

    config = card["config"]
    base = base_model_facts(config.get("pretrained_model_name_or_path"))
    folder = str(output_dir or config.get("output_dir") or "OUTPUT_DIR")
    hub_id = config.get("hub_model_id")
    local = Path(hub_id).name if hub_id else folder
    prompt = config.get("instance_prompt") or "a photo of sks dog"
    photos = card["data"]["instance_images"]
    sample = f"\n![before and after]({card['sample_image']})\n" if card.get("sample_image") else ""
    command = f" This command runs it again:\n\n```bash\n{card['command']}\n```\n" if card.get("command") else "\n"
    adapters = card.get("result_kind") == "adapters"
    what = "LoRA adapters for Stable Diffusion" if adapters else "Stable Diffusion"
    body = f"""
# DreamBooth: `{prompt}`

{what} fine-tuned with [DreamBooth](https://dreambooth.github.io/) on {photos['count'] if photos else 'a few'}
photos of one subject, bound to the prompt `{prompt}`, with MindSpore and mindone (dreambooth-nb).
{sample}
## How it was trained

{settings_table(card, base)}

`run_card.json` holds every setting, the digests of the training pictures and the package versions.{command}
{adapter_use(card, base, hub_id or folder) if adapters else pipeline_use(card, folder, hub_id, local, prompt)}"""
    return str(ModelCard(f"---\n{card_metadata(card, base).to_yaml()}\n---\n{body}"))


def pipeline_use(card: dict, folder: str, hub_id: str | None, local: str, prompt: str) -> str:
    """The card's "use it" sections for a whole pipeline: load it with mindone; export a copy for PyTorch."""
    return f"""
## Use it with MindSpore (mindone)

```python
from mindone.diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{hub_id or folder}")
image = pipe("{prompt}")[0][0]
```

{CPU_SAMPLER_NOTE}

## Use it with diffusers on PyTorch

The weights are safetensors written by mindone (metadata `format: np`, MindSpore parameter names), which PyTorch
refuses. Export a copy first (the tensors stay exactly the same; mindone reads the copy too):

```bash
{export_commands(folder, hub_id)}
```

```python
from diffusers import StableDiffusionPipeline

pipe = StableDiffusionPipeline.from_pretrained("{local}-pt")
image = pipe("{prompt}").images[0]
```
"""

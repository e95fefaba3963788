"""Weight layouts and conversions between them, on dicts of NumPy arrays: mindone's safetensors, diffusers and
transformers on PyTorch, and the original Stable Diffusion single file (LDM keys). No MindSpore, no PyTorch.

- mindone 0.3.0 saves the diffusers folder layout with safetensors metadata `format: np` and MindSpore parameter
  names (`embedding_table`, LayerNorm `gamma`/`beta`); PyTorch's loaders refuse `np` and expect `weight`/`bias`.
  mindone's own from_pretrained reads both namings (it maps PyTorch names onto its cells while loading).
- The single file keeps the three networks under `model.diffusion_model.`, `first_stage_model.` and
  `cond_stage_model.transformer.` with the block names of the original (CompVis) code. The tables here are built
  from each network's config, so any SD 1.x/2.x-shaped UNet and VAE convert (the tiny test models included).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import NamedTuple

from .errors import UserError
from .files import cache_dir, replace_dir, temporary_sibling

WEIGHT_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # PyTorch pickles: unreadable without PyTorch, unsafe to unpickle
# MindSpore parameter name endings and their PyTorch names (nn.Embedding, nn.LayerNorm/GroupNorm/BatchNorm)
MS_TO_PT_ENDINGS = {".embedding_table": ".weight", ".gamma": ".weight", ".beta": ".bias",
                    ".moving_mean": ".running_mean", ".moving_variance": ".running_var"}
NETWORKS = ("unet", "vae", "text_encoder")
LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer."}
# keys of original checkpoints that are not weights of the three networks (schedules, EMA copies, buffers)
LDM_IGNORED = ("model_ema.", "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_", "log_one_minus",
               "posterior_", "logvar", "model.diffusion_model.position_ids")
CONFIG_METADATA = "dreambooth_nb.configs"  # single-file metadata: the folder's small files, to rebuild it offline
LORA_FILES = ("pytorch_lora_weights.safetensors",)
IMPORT_DIR = "imported"


class FormatError(UserError, ValueError):
    """A folder or file that is not in a layout this package reads or writes; the message says what to do."""


# --------------------------------------------------------------------------- reading and writing
def read_weights(path: str | os.PathLike) -> tuple[dict, dict]:
    """(name -> NumPy array, metadata) of a safetensors file."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})


def write_weights(tensors: dict, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Save arrays as a safetensors file tagged `format: pt` (PyTorch's loaders require it), atomically."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        save_file(tensors, str(tmp), metadata={**(metadata or {}), "format": "pt"})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def pytorch_name(key: str) -> str:
    """The PyTorch name of a MindSpore parameter (`embedding_table` -> `weight`, `gamma`/`beta` -> `weight`/`bias`)."""
    for ending, replacement in MS_TO_PT_ENDINGS.items():
        if key.endswith(ending):
            return key[: -len(ending)] + replacement
    return key


def pytorch_names(tensors: dict) -> dict:
    """The same arrays under PyTorch's parameter names."""
    return {pytorch_name(key): value for key, value in tensors.items()}


# --------------------------------------------------------------------------- what a path holds
def model_index(folder: str | os.PathLike) -> dict:
    """model_index.json of a pipeline folder ({} when there is none)."""
    path = Path(folder) / "model_index.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def detect_layout(path: str | os.PathLike) -> str:
    """What a path holds: 'mindone', 'diffusers-pt', 'diffusers-bin', 'single-file', 'pickle', 'lora', 'sdxl' or
    'unknown' (a LoRA or SDXL file or folder is recognised so that it can be refused clearly, or converted later)."""
    path = Path(path)
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            return "pickle"
        if path.suffix != WEIGHT_SUFFIX:
            return "unknown"
        from safetensors import safe_open

        with safe_open(str(path), framework="np") as f:
            keys = list(f.keys())
        if keys and all("lora" in k for k in keys):
            return "lora"
        return "sdxl" if any(k.startswith("conditioner.embedders.1.") for k in keys) else "single-file"
    if any((path / name).is_file() for name in LORA_FILES):
        return "lora"
    index = model_index(path)
    if not index or not (path / "unet").is_dir():
        return "unknown"
    if "XL" in index.get("_class_name", "") or "text_encoder_2" in index:
        return "sdxl"
    weights = sorted((path / "unet").glob(f"*{WEIGHT_SUFFIX}"))
    if not weights:
        return "diffusers-bin" if list((path / "unet").glob("*.bin")) else "unknown"
    from safetensors import safe_open

    with safe_open(str(weights[0]), framework="np") as f:
        return "mindone" if (f.metadata() or {}).get("format") == "np" else "diffusers-pt"


def part_folders(folder: str | os.PathLike, fill_from: str | os.PathLike | None = None) -> dict[str, Path]:
    """Where each part model_index.json lists lives: in the folder, or in `fill_from` for parts a run did not save."""
    out = {}
    for name, value in model_index(folder).items():
        if not (isinstance(value, list) and value and value[0] is not None):
            continue
        where = next((Path(root) / name for root in (folder, fill_from) if root and (Path(root) / name).is_dir()), None)
        if where is None:
            raise FormatError(f"{folder} has no {name}/ folder (a run with --skip_save_text_encoder leaves it out): "
                              f"pass the base model folder it was trained from as --base.")
        out[name] = where
    return out


def network_config(part: str | os.PathLike) -> dict:
    """config.json of one network's folder (unet/, vae/, text_encoder/)."""
    return json.loads((Path(part) / "config.json").read_text(encoding="utf-8"))


def network_weights(part: str | os.PathLike) -> dict:
    """All weights of one network's folder (shards merged; fp16 variants ignored), under PyTorch names."""
    files = [p for p in sorted(Path(part).glob(f"*{WEIGHT_SUFFIX}")) if ".fp16." not in p.name]
    if not files:
        raise FormatError(f"{part} has no {WEIGHT_SUFFIX} weights. Save the model with "
                          f"safetensors (save_pretrained(..., safe_serialization=True)) and try again.")
    tensors = {}
    for path in files:
        tensors.update(read_weights(path)[0])
    return pytorch_names(tensors)


# --------------------------------------------------------------------------- mindone -> diffusers on PyTorch
def to_diffusers_pt(src: str | os.PathLike, dest: str | os.PathLike, fill_from: str | os.PathLike | None = None,
                    extra_files: tuple = ("README.md",)) -> Path:
    """Copy a pipeline folder with its safetensors re-saved for PyTorch (format pt, PyTorch names); atomic.

    Parts the folder lacks (a text encoder a run did not save) come from `fill_from`, its base model.
    """
    src, dest = Path(src), Path(dest)
    require_pipeline(src, sdxl_folder=True)  # folder to folder: each part's names converted, whatever the pipeline
    parts = part_folders(src, fill_from)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}-") as tmp:
        staging = Path(tmp) / "model"
        staging.mkdir()
        shutil.copy2(src / "model_index.json", staging / "model_index.json")
        for name, where in parts.items():
            copy_converted(where, staging / name)
        for name in extra_files:
            if (src / name).is_file():
                shutil.copy2(src / name, staging / name)
        replace_dir(staging, dest)
    return dest


def require_pipeline(src: Path, sdxl_folder: bool = False) -> None:
    """FormatError unless `src` is an SD pipeline folder with safetensors weights (mindone's or PyTorch's); with
    sdxl_folder, an SDXL pipeline folder too."""
    layout = detect_layout(src)
    if sdxl_folder and layout == "sdxl" and src.is_dir() and list((src / "unet").glob(f"*{WEIGHT_SUFFIX}")):
        return
    if layout not in ("mindone", "diffusers-pt"):
        raise FormatError(LAYOUT_ADVICE.get(layout, LAYOUT_ADVICE["unknown"]).format(path=src))


def copy_converted(src: Path, dest: Path) -> None:
    """Copy a file or folder, re-saving safetensors with PyTorch names and `format: pt` on the way."""
    if src.is_dir():
        dest.mkdir(parents=True, exist_ok=True)
        for item in sorted(src.iterdir()):
            copy_converted(item, dest / item.name)
    elif src.suffix == WEIGHT_SUFFIX:
        tensors, metadata = read_weights(src)
        write_weights(pytorch_names(tensors), dest, {k: v for k, v in metadata.items() if k != "format"})
    else:
        shutil.copy2(src, dest)


# --------------------------------------------------------------------------- key tables (diffusers <-> LDM)
class Block(NamedTuple):
    """One renamed block: its diffusers prefix, its LDM prefix, renames inside it, and 1x1-conv weights."""

    diffusers: str
    ldm: str
    parts: tuple = ()
    conv1x1: bool = False  # linear weights in diffusers, 1x1 convolutions in LDM (the VAE's mid attention)


UNET_TOP = (("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2."),
            ("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2."),
            ("class_embedding.linear_1.", "label_emb.0.0."), ("class_embedding.linear_2.", "label_emb.0.2."))
UNET_RESNET = (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("norm2.", "out_layers.0."),
               ("conv2.", "out_layers.3."), ("time_emb_proj.", "emb_layers.1."), ("conv_shortcut.", "skip_connection."))
VAE_TOP = (("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out."))
VAE_RESNET = (("conv_shortcut.", "nin_shortcut."),)
VAE_ATTENTION = (("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out."))


def check_unet_config(config: dict) -> int:
    """layers_per_block of a UNet the tables cover (SD 1.x/2.x shape); FormatError for others (SDXL, ...)."""
    per = config.get("layers_per_block")
    unsupported = [name for name in ("addition_embed_type", "encoder_hid_dim_type") if config.get(name)]
    if config.get("class_embed_type") not in (None, "timestep"):
        unsupported.append("class_embed_type")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        unsupported.append("mid_block_type")
    if not isinstance(per, int) or unsupported or config.get("transformer_layers_per_block", 1) not in (1, [1]):
        raise FormatError(f"this UNet ({', '.join(unsupported) or 'per-block layer counts'}) is not a Stable "
                          f"Diffusion 1.x/2.x UNet; only those convert to the single-file layout for now.")
    return per


def unet_blocks(config: dict) -> list[Block]:
    """The renamed blocks of a Stable Diffusion UNet2DConditionModel, from its config."""
    per, n = check_unet_config(config), len(config["down_block_types"])
    blocks = [Block(d, l) for d, l in UNET_TOP]
    for i, kind in enumerate(config["down_block_types"]):
        for j in range(per):
            slot = 1 + i * (per + 1) + j
            blocks.append(Block(f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{slot}.0.", UNET_RESNET))
            if "CrossAttn" in kind:
                blocks.append(Block(f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{slot}.1."))
        if i < n - 1:
            blocks.append(Block(f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(i + 1) * (per + 1)}.0.op."))
    blocks += [Block("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET),
               Block("mid_block.attentions.0.", "middle_block.1."),
               Block("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET)]
    for i, kind in enumerate(config["up_block_types"]):
        attention = "CrossAttn" in kind
        for j in range(per + 1):
            slot = i * (per + 1) + j
            blocks.append(Block(f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{slot}.0.", UNET_RESNET))
            if attention:
                blocks.append(Block(f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{slot}.1."))
        if i < n - 1:
            slot = i * (per + 1) + per
            blocks.append(Block(f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{slot}.{2 if attention else 1}."))
    return blocks


def vae_blocks(config: dict) -> list[Block]:
    """The renamed blocks of an AutoencoderKL, from its config (the LDM decoder numbers its levels backwards)."""
    per, n = config.get("layers_per_block", 1), len(config["block_out_channels"])
    blocks = [Block(d, l) for d, l in VAE_TOP]
    for i in range(n):
        blocks += [Block(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.", VAE_RESNET)
                   for j in range(per)]
        blocks += [Block(f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.", VAE_RESNET)
                   for j in range(per + 1)]
        if i < n - 1:
            blocks += [Block(f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."),
                       Block(f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample.")]
    for part in ("encoder", "decoder"):
        blocks += [Block(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.", VAE_RESNET) for j in range(2)]
        blocks.append(Block(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION, conv1x1=True))
    return blocks


def rename_keys(tensors: dict, blocks: list[Block], to_ldm: bool, what: str) -> dict:
    """Rename every key through the block tables (longest prefix wins); keys no block covers stay as they are."""
    table = {(b.diffusers if to_ldm else b.ldm): b for b in blocks}
    out = {}
    for key, value in tensors.items():
        parts = key.split(".")
        block = next((table[p] for p in (".".join(parts[:k]) + "." for k in range(len(parts) - 1, 0, -1))
                      if p in table), None)
        if block is None:
            out[key] = value
            continue
        source, target = (block.diffusers, block.ldm) if to_ldm else (block.ldm, block.diffusers)
        rest = key[len(source):]
        for old, new in (block.parts if to_ldm else [(b, a) for a, b in block.parts]):
            if rest.startswith(old):
                rest = new + rest[len(old):]
                break
        out[target + rest] = conv1x1_weight(value, to_ldm) if block.conv1x1 and rest.endswith(".weight") else value
    if len(out) != len(tensors):
        raise FormatError(f"two {what} weights map to the same name; the model does not have the expected shape.")
    return out


def conv1x1_weight(value, to_ldm: bool):
    """A linear layer's (out, in) weight as a 1x1 convolution's (out, in, 1, 1) for LDM, and back."""
    if to_ldm and value.ndim == 2:
        return value.reshape(*value.shape, 1, 1)
    return value[:, :, 0, 0] if not to_ldm and value.ndim == 4 else value


# --------------------------------------------------------------------------- the single file
def to_single_file_tensors(weights: dict[str, dict], configs: dict[str, dict]) -> dict:
    """One LDM-layout dict from the three networks' weights (PyTorch names) and their configs."""
    out = {}
    for name, tensors in weights.items():
        if name == "unet":
            tensors = rename_keys(tensors, unet_blocks(configs["unet"]), True, "UNet")
        elif name == "vae":
            tensors = rename_keys(tensors, vae_blocks(configs["vae"]), True, "VAE")
        out.update({LDM_PREFIXES[name] + key: value for key, value in tensors.items()})
    return out


def from_single_file_tensors(tensors: dict, configs: dict[str, dict]) -> dict[str, dict]:
    """The three networks' weights (diffusers/PyTorch names) from an LDM-layout dict and the networks' configs."""
    split: dict[str, dict] = {name: {} for name in NETWORKS}
    unknown = []
    for key, value in tensors.items():
        name = next((n for n, prefix in LDM_PREFIXES.items() if key.startswith(prefix)), None)
        if name is not None and not key.endswith("position_ids"):
            split[name][key[len(LDM_PREFIXES[name]):]] = value
        elif name is None and not key.startswith(LDM_IGNORED):
            unknown.append(key)
    if unknown or not split["unet"]:
        found = f"unexpected keys such as {unknown[0]}" if unknown else "no model.diffusion_model.* keys"
        raise FormatError(f"this file is not a Stable Diffusion checkpoint in the original SD 1.x layout ({found}); "
                          f"SD 2.x's OpenCLIP text encoder layout is not read yet. Use the model's diffusers folder.")
    split["unet"] = rename_keys(split["unet"], unet_blocks(configs["unet"]), False, "UNet")
    split["vae"] = rename_keys(split["vae"], vae_blocks(configs["vae"]), False, "VAE")
    return {name: tensors for name, tensors in split.items() if tensors}


def small_files(folder: Path, limit: int = 4 << 20) -> dict[str, str]:
    """The text files of a pipeline folder (configs, tokenizer) as {relative path: text}, weights left out."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix not in (WEIGHT_SUFFIX, ".bin", ".ckpt") and path.stat().st_size < limit:
            try:
                out[path.relative_to(folder).as_posix()] = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue
    return out


def write_single_file(src: str | os.PathLike, dest: str | os.PathLike, fill_from: str | os.PathLike | None = None,
                      embed_configs: bool = True, extra_metadata: dict | None = None) -> Path:
    """Write a pipeline folder as one original-layout .safetensors; its configs (and extra_metadata) ride along in
    the metadata."""
    src, dest = Path(src), Path(dest)
    require_pipeline(src)
    if dest.suffix != WEIGHT_SUFFIX:
        raise FormatError(f"{dest}: the single file must end in {WEIGHT_SUFFIX}.")
    parts = part_folders(src, fill_from)
    missing = [n for n in NETWORKS if n not in parts and n != "vae"]
    if missing:
        raise FormatError(f"{src} lists no {missing[0]} in model_index.json: a single file needs the UNet and the "
                          f"text encoder.")
    networks = [n for n in NETWORKS if n in parts]
    tensors = to_single_file_tensors({n: network_weights(parts[n]) for n in networks},
                                     {n: network_config(parts[n]) for n in networks})
    metadata = {CONFIG_METADATA: json.dumps(pipeline_files(src, parts))} if embed_configs else {}
    return write_weights(tensors, dest, {**metadata, **(extra_metadata or {})})


def pipeline_files(src: Path, parts: dict[str, Path]) -> dict[str, str]:
    """The small files of a pipeline (model_index.json, configs, tokenizer, scheduler) as {relative path: text}."""
    files = {"model_index.json": (src / "model_index.json").read_text(encoding="utf-8")}
    for name, where in parts.items():
        files.update({f"{name}/{path}": text for path, text in small_files(where).items()})
    return files


def single_file_to_folder(path: str | os.PathLike, dest: str | os.PathLike,
                          config: str | os.PathLike | None = None) -> Path:
    """Rebuild a diffusers folder (PyTorch names, format pt) from a single file; configs from `config` or its metadata."""
    path, dest = Path(path), Path(dest)
    tensors, metadata = read_weights(path)
    with tempfile.TemporaryDirectory(dir=dest.parent if dest.parent.exists() else None,
                                     prefix=f".{dest.name}-") as tmp:
        staging = Path(tmp) / "model"
        if config is not None:
            require_pipeline(Path(config))
            files = pipeline_files(Path(config), part_folders(config))
        elif CONFIG_METADATA in metadata:
            files = json.loads(metadata[CONFIG_METADATA])
        else:
            raise FormatError(
                f"{path.name} does not say which model shape it has (no configs inside). Convert it once with a "
                f"diffusers folder of the same architecture (e.g. the base model it was fine-tuned from): python -m "
                f"dreambooth_nb.export {path} --to diffusers-pt FOLDER --config BASE_FOLDER, then use FOLDER.")
        for name, text in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(text, encoding="utf-8")
        configs = {n: json.loads((staging / n / "config.json").read_text()) for n in NETWORKS
                   if (staging / n / "config.json").is_file()}
        for name, weights in from_single_file_tensors(tensors, configs).items():
            file = "model.safetensors" if name == "text_encoder" else "diffusion_pytorch_model.safetensors"
            write_weights(weights, staging / name / file)
        dest.parent.mkdir(parents=True, exist_ok=True)
        replace_dir(staging, dest)
    return dest


# --------------------------------------------------------------------------- import for this package
def importable_model(path: str | os.PathLike, config: str | os.PathLike | None = None) -> Path:
    """A folder mindone's from_pretrained reads for `path`: the folder itself, or a single file converted once (cached)."""
    path = Path(path)
    layout = detect_layout(path)
    if layout in ("mindone", "diffusers-pt"):
        return path  # mindone maps PyTorch names onto its cells when loading
    if layout == "single-file":
        stat = path.stat()
        folder = cache_dir() / IMPORT_DIR / f"{path.stem}-{stat.st_size:x}-{stat.st_mtime_ns:x}"
        if not (folder / "model_index.json").is_file():
            single_file_to_folder(path, folder, config)
        return folder
    raise FormatError(LAYOUT_ADVICE.get(layout, LAYOUT_ADVICE["unknown"]).format(path=path))


LAYOUT_ADVICE = {
    "lora": "{path} holds a LoRA adapter, not a whole model: pass the base model it was trained on (its "
            "train_config.json names it) and load the adapter with dreambooth_nb.lora.lora_pipeline(base, adapters).",
    "sdxl": "{path} is a Stable Diffusion XL checkpoint, which is not converted here (a folder in diffusers layout "
            "exports --to diffusers-pt): train SDXL from a diffusers folder or hub id with `python -m "
            "dreambooth_nb.train_sdxl_lora`, or pick an SD 1.x/2.x model.",
    "pickle": "{path} is a PyTorch pickle, which mindone cannot read (and unpickling runs code). Convert it to "
              ".safetensors on PyTorch (safetensors.torch.save_file(torch.load(path)['state_dict'], new_path)) or "
              "use the model's .safetensors file.",
    "diffusers-bin": "{path} stores its weights as PyTorch .bin files, which mindone cannot read. Re-save it with "
                     "safetensors on PyTorch: DiffusionPipeline.from_pretrained(path).save_pretrained(new_path).",
    "unknown": "{path} is not a Stable Diffusion folder in diffusers layout (model_index.json and unet/ inside) nor a "
               ".safetensors single file. Pass a folder saved with save_pretrained, a single file, or a hub id.",
}

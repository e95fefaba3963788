"""Resumable checkpoints: trained weights, optimizer moments and step, lr position and RNG state, written atomically.

Layout of output_dir/checkpoint-N/ (N = optimizer steps done):
    unet/, text_encoder/   trained networks in diffusers layout (safetensors; text_encoder only when trained)
    optimizer.safetensors  AdamW moments (adam_m/<network>/<weight>, adam_v/...) and its global_step (the lr position)
    state.json             step, learning rate, loss history, Python and NumPy RNG state, the settings used
A checkpoint is written to a hidden temporary folder and renamed when complete, so a folder named
checkpoint-N is always whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
PREVIOUS_DIR = "previous-checkpoints"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def checkpoint_step(path: str | os.PathLike) -> int:
    """N of a checkpoint-N folder."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not named checkpoint-<step>.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint-N folders in output_dir, oldest (lowest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: 'latest' (None when there is none yet), a path, or a name inside output_dir."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    for candidate in (Path(resume), Path(output_dir) / resume, Path(output_dir) / Path(resume).name):
        if (candidate / STATE_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"--resume_from_checkpoint={resume}: no complete checkpoint there (a checkpoint-N folder with {STATE_FILE}). "
        f"Use 'latest', or one of: {', '.join(p.name for p in list_checkpoints(output_dir)) or 'none yet'}.")


# ------------------------------------------------------------------------------ pieces
def rng_state() -> dict:
    """Python's and NumPy's global random state, as JSON-friendly lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss],
            "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def named_parameters(nets: dict) -> dict:
    """Every parameter of the networks under '<network>/<name inside it>' (names that do not change when
    a network is wrapped in a train step, unlike Parameter.name)."""
    return {f"{net_name}/{name}": p for net_name, net in nets.items() for name, p in net.parameters_and_names()}


def optimizer_arrays(optimizer, nets: dict) -> dict[str, np.ndarray]:
    """AdamW's moments, keyed by the weight they belong to (adam_m/unet/conv_in.weight, ...), and its global_step."""
    keys = {id(p): key for key, p in named_parameters(nets).items()}
    arrays = {"global_step": optimizer.global_step.asnumpy()}
    for kind, moments in (("adam_m", optimizer.moments1), ("adam_v", optimizer.moments2)):
        arrays.update({f"{kind}/{keys[id(p)]}": m.asnumpy() for p, m in zip(optimizer.parameters, moments)})
    return arrays


def set_parameters(params: dict, arrays: dict[str, np.ndarray], source: str) -> None:
    """Copy arrays into the parameters of the same key; every one must be there, with the same shape."""
    import mindspore as ms

    missing = [key for key in params if key not in arrays]
    if missing:
        raise ValueError(f"{source} lacks {len(missing)} weights (e.g. {missing[0]}): it was written for another "
                         "model or other training settings. Resume with the settings it was made with.")
    for key, p in params.items():
        value = arrays[key]
        if tuple(value.shape) != tuple(p.shape):
            raise ValueError(f"{source}: {key} has shape {value.shape}, the model expects {tuple(p.shape)}.")
        p.set_data(ms.Tensor(value, dtype=p.dtype))


def set_optimizer_state(optimizer, nets: dict, arrays: dict[str, np.ndarray], source: str) -> None:
    """Restore what optimizer_arrays() saved."""
    keys = {id(p): key for key, p in named_parameters(nets).items()}
    params = {"global_step": optimizer.global_step}
    for kind, moments in (("adam_m", optimizer.moments1), ("adam_v", optimizer.moments2)):
        params.update({f"{kind}/{keys[id(p)]}": m for p, m in zip(optimizer.parameters, moments)})
    set_parameters(params, arrays, source)


def weight_file(folder: Path) -> Path:
    """The safetensors file save_pretrained wrote in `folder`."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"No {' or '.join(WEIGHT_FILES)} in {folder}.")


def load_net_weights(net, folder: Path) -> None:
    """Load weights saved by save_pretrained back into `net` (same names, same shapes)."""
    from safetensors.numpy import load_file

    path = weight_file(folder)
    set_parameters(dict(net.parameters_and_names()), load_file(str(path)), str(path))


def weight_digest(nets: dict) -> dict:
    """sha256 over every weight of the networks (by name) and their float sum: equal digests, equal weights."""
    sha, total = hashlib.sha256(), 0.0
    for key, p in sorted(named_parameters(nets).items()):
        value = np.ascontiguousarray(p.asnumpy())
        sha.update(key.encode())
        sha.update(value.tobytes())
        total += float(value.astype(np.float64).sum())
    return {"sha256": sha.hexdigest(), "sum": total}


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(output_dir: str | os.PathLike, step: int, nets: dict, optimizer, state: dict) -> Path:
    """Write output_dir/checkpoint-<step>/ atomically; returns its path."""
    from safetensors.numpy import save_file

    from ..common.files import replace_dir

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for name, net in nets.items():
            net.save_pretrained(str(tmp / name))
        save_file(optimizer_arrays(optimizer, nets), str(tmp / OPTIMIZER_FILE))
        state = {**state, "step": step, "trained": sorted(nets), "rng": rng_state()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        replace_dir(tmp, final)
    except BaseException:  # an interrupt mid-write leaves the older checkpoints and no half folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def load_checkpoint(path: str | os.PathLike, nets: dict, optimizer) -> dict:
    """Restore weights, optimizer moments and step, and RNG state from a checkpoint; returns its state.json."""
    from safetensors.numpy import load_file

    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
    if sorted(nets) != state["trained"]:
        raise ValueError(f"{path} was trained with {' + '.join(state['trained'])}; this run trains "
                         f"{' + '.join(sorted(nets))}. Resume with the same --train_text_encoder setting.")
    for name, net in nets.items():
        load_net_weights(net, path / name)
    set_optimizer_state(optimizer, nets, load_file(str(path / OPTIMIZER_FILE)), str(path / OPTIMIZER_FILE))
    set_rng_state(state["rng"])
    return state


def prune_checkpoints(output_dir: str | os.PathLike, limit: int | None) -> list[Path]:
    """Delete the oldest checkpoints so at most `limit` remain; returns what was removed."""
    found = list_checkpoints(output_dir)
    if not limit or len(found) <= limit:
        return []
    removed = found[:len(found) - limit]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


def set_aside_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Move an earlier run's checkpoints into output_dir/previous-checkpoints/ (replacing what an even older run left).

    A new run (not resumed) in the same output_dir must not resume from, or prune, another run's checkpoints.
    """
    found = list_checkpoints(output_dir)
    if found:
        aside = Path(output_dir) / PREVIOUS_DIR
        shutil.rmtree(aside, ignore_errors=True)
        aside.mkdir()
        for path in found:
            os.replace(path, aside / path.name)
    return found


def remove_stale_temporaries(output_dir: str | os.PathLike) -> list[Path]:
    """Delete half-written checkpoint folders left by a process that was killed while writing."""
    folder = Path(output_dir)
    stale = list(folder.glob(".checkpoint-*.tmp-*")) if folder.is_dir() else []
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale

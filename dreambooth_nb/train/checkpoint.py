"""Resumable checkpoints: trained weights, optimizer moments and step, lr position and RNG state, written atomically.

Layout of output_dir/checkpoint-N/ (N = optimizer steps done):
    unet/, text_encoder/   trained networks in diffusers layout (safetensors; text_encoder only when trained)
    trained.safetensors    instead of those, for methods that train a few weights (LoRA): just those weights
    optimizer.safetensors  AdamW moments (adam_m/<network>/<weight>, adam_v/...) and its global_step (the lr position)
    state.json             step, learning rate, loss history, Python and NumPy RNG state, the settings used
    manifest.json          sha256 of every other file, written last: a checkpoint is checked against it on resume
A checkpoint is written to a hidden temporary folder and renamed when complete, so a folder named
checkpoint-N is always whole; flipped bits or a truncated file are found by the manifest, and the error names
the damaged file and the newest intact checkpoint.
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

from ..common.errors import InputError, MissingFileError, UserError
from ..common.runtime import write_weights

CHECKPOINT_NAME = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.safetensors"
TRAINED_FILE = "trained.safetensors"
MANIFEST_FILE = "manifest.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be resumed (damaged, or made with other settings); the message says what to do."""


def checkpoint_step(path: str | os.PathLike) -> int:
    """N of a checkpoint-N folder."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    if not match:
        raise InputError(f"{path} is not named checkpoint-<step>.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint-N folders in output_dir, oldest (lowest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if CHECKPOINT_NAME.match(p.name) and (p / STATE_FILE).is_file()]
    return sorted(found, key=checkpoint_step)


def find_checkpoint(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: 'latest' (None when there is none yet), a path, or a name inside output_dir.

    The one chosen is checked against its manifest first: a damaged one is refused with the newest intact one named.
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        return verified(found[-1], found[:-1]) if found else None
    for candidate in (Path(resume), Path(output_dir) / resume, Path(output_dir) / Path(resume).name):
        if (candidate / STATE_FILE).is_file():
            return verified(candidate, [p for p in list_checkpoints(output_dir) if p != candidate])
    raise MissingFileError(
        f"--resume_from_checkpoint={resume}: no complete checkpoint there (a checkpoint-N folder with {STATE_FILE}). "
        f"Use 'latest', or one of: {', '.join(p.name for p in list_checkpoints(output_dir)) or 'none yet'}.")


def damage(checkpoint: Path) -> str | None:
    """What is wrong with a checkpoint's files against its manifest ('unet/... does not match ...'), or None when whole."""
    from ..common.files import file_hash

    manifest = checkpoint / MANIFEST_FILE
    if not manifest.is_file():
        return f"{MANIFEST_FILE} is missing (not written by this version, or cut short)"
    try:
        expected = json.loads(manifest.read_text(encoding="utf-8"))
    except ValueError:
        return f"{MANIFEST_FILE} is unreadable"
    for name, digest in expected.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{name} is missing"
        if file_hash(path) != digest:
            return f"{name} does not match its digest (changed or damaged after it was written)"
    for name in expected:
        bad = non_finite_tensor(checkpoint / name) if name.endswith(".safetensors") else None
        if bad:
            return f"{name} holds nan or inf in {bad} (a run that diverged, or a file changed with its digest)"
    return None


def non_finite_tensor(path: Path) -> str | None:
    """The first tensor of a safetensors file with a nan or inf in it, or None when every number is finite."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        for key in f.keys():
            try:
                value = f.get_tensor(key)
            except (TypeError, ValueError):  # a dtype NumPy lacks (bfloat16): not checked here
                continue
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                return key
    return None


def verified(checkpoint: Path, older: list[Path]) -> Path:
    """`checkpoint` when its files match its manifest; else a CheckpointError naming the damage and the newest
    intact older checkpoint to resume from instead."""
    problem = damage(checkpoint)
    if problem is None:
        return checkpoint
    intact = next((p for p in reversed(older) if damage(p) is None), None)
    offer = (f"{intact.name} is intact: resume from it with --resume_from_checkpoint={intact.name}, or delete "
             f"{checkpoint.name}." if intact else "No intact checkpoint is left: start a new run (drop --resume_from_checkpoint).")
    raise CheckpointError(f"{checkpoint} is damaged: {problem}. {offer}")


def mismatched_settings(saved: dict, config) -> dict[str, tuple]:
    """{flag: (checkpoint's value, this run's value)} for the settings a resume must keep (flag(resume_must_match=True))."""
    import dataclasses

    from ..common.config import names_with

    now = dataclasses.asdict(config)
    return {k: (saved.get(k), now.get(k)) for k in names_with(config, "resume_must_match")
            if k in saved and saved.get(k) != now.get(k)}


def check_settings(path: Path, state: dict, config) -> None:
    """Refuse to resume a checkpoint made with other training settings (it would silently change the run)."""
    changed = mismatched_settings(state.get("config", {}), config)
    if changed:
        listed = "; ".join(f"--{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items())
        raise CheckpointError(f"{path} was made with other settings ({listed}). Resume with the settings it was made "
                              f"with, or start a new run without --resume_from_checkpoint.")


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
    """Copy a checkpoint's arrays into the parameters of the same key (runtime.write_weights)."""
    write_weights(params, arrays, source, "Resume with the settings it was made with.")


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
    raise MissingFileError(f"No {' or '.join(WEIGHT_FILES)} in {folder}.")


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
def trained_parameters(nets: dict) -> dict:
    """The trained (requires_grad) weights of the networks, by '<network>/<name>'."""
    return {key: p for key, p in named_parameters(nets).items() if p.requires_grad}


def save_checkpoint(output_dir: str | os.PathLike, step: int, nets: dict, optimizer, state: dict,
                    whole_networks: bool = True) -> Path:
    """Write output_dir/checkpoint-<step>/ atomically; returns its path.

    whole_networks=False keeps only the trained weights (trained.safetensors): a LoRA checkpoint is a few MB.
    """
    from safetensors.numpy import save_file

    from ..common.files import replace_dir

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    tmp = output_dir / f".checkpoint-{step}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        if whole_networks:
            for name, net in nets.items():
                net.save_pretrained(str(tmp / name))
        else:
            save_file({k: p.asnumpy() for k, p in trained_parameters(nets).items()}, str(tmp / TRAINED_FILE))
        save_file(optimizer_arrays(optimizer, nets), str(tmp / OPTIMIZER_FILE))
        state = {**state, "step": step, "trained": sorted(nets), "rng": rng_state()}
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        write_manifest(tmp)
        replace_dir(tmp, final)
    except BaseException:  # an interrupt mid-write leaves the older checkpoints and no half folder
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def write_manifest(folder: Path) -> Path:
    """folder/manifest.json: the sha256 of every file in the folder (written last)."""
    from ..common.files import file_hash

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    digests = {str(p.relative_to(folder)): file_hash(p) for p in files}
    (folder / MANIFEST_FILE).write_text(json.dumps(digests, indent=1), encoding="utf-8")
    return folder / MANIFEST_FILE


def load_checkpoint(path: str | os.PathLike, nets: dict, optimizer, config=None) -> dict:
    """Restore weights, optimizer moments and step, and RNG state from a checkpoint; returns its state.json.

    With `config`, the checkpoint's settings must match (check_settings). A file that cannot be read is named.
    """
    from safetensors.numpy import load_file

    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        if config is not None:
            check_settings(path, state, config)
        if sorted(nets) != state["trained"]:
            raise CheckpointError(f"{path} was trained with {' + '.join(state['trained'])}; this run trains "
                                  f"{' + '.join(sorted(nets))}. Resume with the same --train_text_encoder setting.")
        if (path / TRAINED_FILE).is_file():
            set_parameters(trained_parameters(nets), load_file(str(path / TRAINED_FILE)), str(path / TRAINED_FILE))
        else:
            for name, net in nets.items():
                load_net_weights(net, path / name)
        set_optimizer_state(optimizer, nets, load_file(str(path / OPTIMIZER_FILE)), str(path / OPTIMIZER_FILE))
        set_rng_state(state["rng"])
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as error:  # unreadable JSON or safetensors, a missing entry
        raise CheckpointError(f"{path} cannot be resumed: {type(error).__name__}: {str(error)[:160]}. Resume from an "
                              f"earlier checkpoint, or start a new run without --resume_from_checkpoint.") from None
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

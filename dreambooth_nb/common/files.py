"""Files: the cache folder, atomic writes (a file or folder is whole or absent), content hashes."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

CACHE_ENV = "DREAMBOOTH_NB_CACHE"
# a model's judged scores and pictures, kept in its folder by the toy world's judging (chapters 06, 08, 09): not shared
JUDGED_FILES = SCORES_FILE, PICTURES_FILE = "scores.json", "pictures.npz"


def cache_dir() -> Path:
    """Where built models and generated data are kept (DREAMBOOTH_NB_CACHE overrides ~/.cache/dreambooth_nb)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "dreambooth_nb"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def temporary_sibling(path: Path, tag: str = "tmp") -> Path:
    """A hidden name next to `path` for writing before the rename (.name.tmp<pid>.suffix)."""
    return path.with_name(f".{path.stem}.{tag}{os.getpid()}{path.suffix}")


def save_atomic(item, path: str | os.PathLike) -> Path:
    """Save a PIL image or a matplotlib figure through a temporary file and a rename: no half-written file is left."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        if hasattr(item, "savefig"):
            item.savefig(tmp, dpi=120)
        else:
            item.save(tmp)
        os.replace(tmp, path)
    except BaseException:  # an interrupt or a full disk leaves no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write a text file through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, value) -> Path:
    """Write JSON (indented) through a temporary file and a rename."""
    return write_text_atomic(path, json.dumps(value, indent=1) + "\n")


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


def share_modes(root: str | os.PathLike) -> Path:
    """Give `root` and everything under it the modes a new file or folder gets from the umask (usually 0644 and
    0755): mindone's safetensors writer makes weight files 0600 and temporary folders are 0700, so a model meant
    for sharing would be unreadable to other users and containers."""
    root = Path(root)
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if path.is_symlink():
            continue
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    return root


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (finds exact duplicates, names content)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

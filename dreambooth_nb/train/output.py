"""The output folder of a run: one run at a time (a lock), room and permission checked before training, earlier
results kept (never deleted or truncated in silence), and what a killed process left half-written cleaned up."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from ..common.errors import UserError

LOCK_FILE = ".dreambooth-nb.lock"
PREVIOUS_DIR = "previous-runs"
KEEP_PREVIOUS = 3  # earlier runs kept in previous-runs/; the oldest beyond this is removed, with a message
# what an earlier run leaves in its output folder (anything else, e.g. the user's own files, is left where it is)
RUN_FILES = ("model_index.json", "train_config.json", "run_card.json", "README.md", "error.log", "unet", "vae",
             "text_encoder", "tokenizer", "scheduler", "feature_extractor", "safety_checker", "logs", "validation",
             "rank-digests", "pytorch_lora_weights.safetensors", "samples.png")
STALE_PATTERNS = (".checkpoint-*.tmp-*", ".pipeline.tmp-*", ".*.old-*", ".*.tmp*")


class OutputError(UserError, RuntimeError):
    """The output folder cannot take this run (in use, not writable, too little room); the message says what to do."""


@dataclass
class RunLock:
    """output_dir/.dreambooth-nb.lock, held while a run writes there: another run on the same folder stops at once."""

    path: Path

    @classmethod
    def acquire(cls, output_dir: Path) -> "RunLock":
        """Take the folder's lock, clearing one left by a process that no longer runs; OutputError when it is held."""
        path = Path(output_dir) / LOCK_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"Cannot create --output_dir={output_dir} ({error.strerror or error}). Choose a folder "
                              f"you can write to.") from None
        holder = read_lock(path)
        if holder and holder_alive(holder):
            raise OutputError(
                f"{output_dir} is in use by another training run (process {holder['pid']} on {holder['host']}, "
                f"started {holder['started']}). Wait for it to finish, stop it, or choose another --output_dir.")
        path.unlink(missing_ok=True)  # a stale lock from a killed process
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # another run took it between our check and now
            return cls.acquire(output_dir)
        except OSError as error:
            raise OutputError(f"Cannot write to --output_dir={output_dir} ({error.strerror or error}). Choose a "
                              f"folder you can write to, or fix its permissions.") from None
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%H:%M:%S")}, f)
        return cls(path)

    def release(self) -> None:
        """Give the folder back (only our own lock)."""
        holder = read_lock(self.path)
        if holder and holder.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)


def read_lock(path: Path) -> dict | None:
    """What a lock file says (None when there is none or it is unreadable)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def holder_alive(holder: dict) -> bool:
    """True when the process that wrote a lock still runs (on this machine; another host's lock is trusted)."""
    if holder.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, KeyError, TypeError):
        return True
    return True


def check_writable(output_dir: Path, needed_bytes: int) -> None:
    """Create the folder, write and remove a small file there, and compare free space with what the run will write."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as error:
        raise OutputError(f"Cannot write to --output_dir={output_dir} ({error.strerror or error}). Choose a folder you "
                          f"can write to, or fix its permissions.") from None
    free = shutil.disk_usage(output_dir).free
    if free < needed_bytes:
        raise OutputError(f"--output_dir={output_dir} has {free / 2**20:.0f} MB free; this run writes about "
                          f"{needed_bytes / 2**20:.0f} MB (model and checkpoints). Free some space, lower "
                          f"--checkpoints_total_limit, or choose another folder.")


def bytes_needed(trained_bytes: int, model_bytes: int, checkpoints_kept: int | None, checkpoints: int) -> int:
    """Room a run needs: the saved model, plus each checkpoint kept at once (weights and two AdamW moments), plus a
    checkpoint being written; with a 20 % margin."""
    kept = min(checkpoints, checkpoints_kept or checkpoints) + 1
    return int(1.2 * (model_bytes + kept * 3 * trained_bytes))


def earlier_results(output_dir: Path) -> list[Path]:
    """What an earlier run left in the folder (its model, cards, logs, validation images and checkpoints)."""
    if not output_dir.is_dir():
        return []
    found = [output_dir / name for name in RUN_FILES if (output_dir / name).exists()]
    return found + sorted(p for p in output_dir.glob("checkpoint-*") if p.is_dir())


def keep_earlier_run(output_dir: Path) -> Path | None:
    """Move an earlier run's results into output_dir/previous-runs/<time>/ (a new run must not overwrite or resume
    them by accident); returns where they went. The oldest kept run beyond KEEP_PREVIOUS is removed, and said."""
    found = earlier_results(output_dir)
    if not found:
        return None
    target = output_dir / PREVIOUS_DIR / time.strftime("%Y%m%d-%H%M%S")
    while target.exists():
        target = target.with_name(target.name + "-1")
    target.mkdir(parents=True)
    for path in found:
        os.replace(path, target / path.name)
    kept = sorted(p for p in (output_dir / PREVIOUS_DIR).iterdir() if p.is_dir())
    for old in kept[:-KEEP_PREVIOUS]:
        shutil.rmtree(old, ignore_errors=True)
        print(f"removed {old} (the oldest earlier run; previous-runs/ keeps the last {KEEP_PREVIOUS})")
    return target


def remove_stale_temporaries(output_dir: Path) -> list[Path]:
    """Delete half-written folders and files a killed process left (checkpoints, the pipeline being saved, swaps)."""
    if not output_dir.is_dir():
        return []
    stale = sorted({p for pattern in STALE_PATTERNS for p in output_dir.glob(pattern)})
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return stale

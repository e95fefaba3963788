"""What every command line of the package shares: short argparse errors, one line per failure (never a stack
trace), Ctrl-C and SIGTERM at any moment, the full traceback kept in a log, no empty output folder left behind."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import os
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

from .errors import UserError
from .files import cache_dir

EXIT_ERROR = 2  # a user's mistake or an environment fault, explained in one line
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C or SIGTERM (what shells report for SIGINT)


class QuietParser(argparse.ArgumentParser):
    """argparse without the 45-line usage dump on a typo: one line, a suggestion, and where the help is; no
    abbreviated flags (a mistyped flag is an error, never silently another flag)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        hint = ""
        if "unrecognized arguments:" in message:
            wrong = message.split("unrecognized arguments:", 1)[1].split()[0].split("=")[0]
            options = [o for action in self._actions for o in action.option_strings]
            close = difflib.get_close_matches(wrong, options, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: {message}{hint}. See: {self.prog} --help", file=sys.stderr)
        raise SystemExit(EXIT_ERROR)


def error_summary(error: BaseException) -> str:
    """One line for an error: its own message for a user's mistake; out-of-memory with what to lower; else the
    exception's type and its first meaningful line (MindSpore's messages run to a hundred lines)."""
    import re

    text = str(error)
    if isinstance(error, (UserError, ValueError, FileNotFoundError, PermissionError)) and text:
        return text.splitlines()[0] if isinstance(error, UserError) and "\n- " not in text else text
    wanted = re.search(r"alloc size: (\d+)B", text)
    if isinstance(error, MemoryError) or any(s in text for s in ("Memory not enough", "Memory isn't enough", "bad_alloc")):
        size = f" (one kernel asked for {int(wanted.group(1)) / 2**30:.1f} GiB)" if wanted else ""
        return (f"out of memory{size}. Lower --resolution (the default toy-world model works at 32) or "
                f"--train_batch_size, or add --gradient_checkpointing.")
    lines = [line.strip(" -") for line in text.splitlines()]
    first = next((line for line in lines if line and not line.startswith("C++ Call Stack")), "")
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


def environment_problem(error: BaseException, folder: Path | None) -> str | None:
    """One line for an OSError fixed outside the program: a full disk, a read-only or forbidden folder (None else)."""
    import errno

    if not isinstance(error, OSError) or isinstance(error, FileNotFoundError):
        return None
    where = error.filename or folder or "the output folder"
    if str(where).endswith(".dreambooth-nb.lock"):  # the run lock: name the folder it locks
        where = Path(where).parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the disk that holds {where}. Free some space (old outputs, or checkpoint-N folders "
                f"you no longer need) and run the same command again; a training run continues from its last "
                f"checkpoint with --resume_from_checkpoint=latest.")
    if error.errno == errno.EROFS:
        return f"{where} is on a read-only file system: choose a folder you can write to (for training: --output_dir)."
    if error.errno in (errno.EACCES, errno.EPERM):
        return (f"no permission to write {where}: choose a folder you can write to (for training: --output_dir), "
                f"or change its permissions.")
    return None


def interrupted_inside(error: BaseException) -> bool:
    """True for MindSpore's wrapping of a KeyboardInterrupt raised while it compiled a graph."""
    return "KeyboardInterrupt" in str(error)[:2000]


def log_traceback(name: str, error: BaseException, output_dir: Path | None) -> Path | None:
    """Write the full traceback to output_dir/error.log when that folder already held the run's files, else to
    the cache's logs/; returns where it went (None when nothing could be written)."""
    text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    places = []
    if output_dir is not None and output_dir.is_dir() and any(p.name != ".dreambooth-nb.lock" for p in output_dir.iterdir()):
        places.append(output_dir / "error.log")
    places.append(cache_dir() / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log")
    for path in places:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            return path
        except OSError:
            continue
    return None


@contextlib.contextmanager
def signals_deferred():
    """Ctrl-C (SIGINT) and SIGTERM only ask to stop while this block runs; the code checks when it is safe.

    The training loop stops after the step it is in (a step is never cut in half: its update and its loss
    are both kept); a command starting MindSpore stops once the import is done (an interrupt inside a C
    extension's start can abort the interpreter). A second signal interrupts at once. Yields a callable
    that says whether a stop was asked. Outside the main thread (a widget's background thread) signals
    cannot be caught and nothing changes: the Stop button asks instead.
    """
    import threading

    asked = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def ask(signum, frame):
        if asked:
            raise KeyboardInterrupt(f"signal {signum} (second)")
        asked.append(signum)

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.siginterrupt(sig, False)  # system calls in C code resume after the handler (no EINTR failures)
    try:
        yield lambda: bool(asked)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


_EARLY: list = []


def record_early_signals() -> None:
    """From a command's first line: a SIGTERM that comes while Python imports the package is noted, not fatal;
    run_command then stops before doing anything."""
    signal.signal(signal.SIGTERM, lambda signum, frame: _EARLY.append(signum))
    signal.siginterrupt(signal.SIGTERM, False)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def ends_with_this_process(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `preexec_fn` for a child this process starts (a training run, msrun): on Linux the child gets `signum`
    (SIGTERM: a training command saves a checkpoint and stops) when this process dies by any means, the
    out-of-memory killer or a killed notebook kernel included; no orphan goes on training and holding the
    folder's lock. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes, prctl.restype = [ctypes.c_int, ctypes.c_ulong], ctypes.c_int
    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec: nothing here may import or take a lock
        prctl(PR_SET_PDEATHSIG, signum)
        if os.getppid() != parent:  # the parent died before the request was made
            os._exit(EXIT_INTERRUPTED)

    return arm


def stop_on_sigterm(signum, frame) -> None:
    """SIGTERM handler: stop like Ctrl-C (the trainer then writes a checkpoint of the step it finished)."""
    raise KeyboardInterrupt(f"signal {signum}")


def run_command(name: str, work: Callable[[], int], output_dir: str | os.PathLike | None = None) -> int:
    """Run a command's work: exit code 0/130 from `work`, 2 with one line on any error, 130 on an interrupt.

    A folder `output_dir` that this command created and left empty (the run failed before writing anything)
    is removed again.
    """
    folder = Path(output_dir).expanduser() if output_dir else None
    existed = folder is not None and folder.exists()
    previous = signal.signal(signal.SIGTERM, stop_on_sigterm)
    try:
        if _EARLY:
            raise KeyboardInterrupt("stopped while starting")
        return work()
    except KeyboardInterrupt:
        print("interrupted before training could save anything (nothing was changed)" if not existed else
              "interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:  # one line for everything; the traceback goes to a log file
        if interrupted_inside(error):
            print("interrupted while a graph was compiling (nothing was changed)", file=sys.stderr)
            return EXIT_INTERRUPTED
        problem = environment_problem(error, folder)
        if problem:  # nothing to debug, and a log on a full disk could not be written anyway
            print(f"error: {problem}", file=sys.stderr)
            return EXIT_ERROR
        print(f"error: {error_summary(error)}", file=sys.stderr)
        if not isinstance(error, UserError):  # anything else is a bug: its traceback is kept
            where = log_traceback(name, error, folder)
            print(f"(full traceback in {where})" if where else "(the traceback could not be written anywhere)",
                  file=sys.stderr)
        return EXIT_ERROR
    finally:
        signal.signal(signal.SIGTERM, previous)
        if folder is not None and not existed:
            remove_if_empty(folder)


def remove_if_empty(folder: Path) -> None:
    """Delete a folder that holds nothing (or only a released lock file)."""
    try:
        if folder.is_dir() and all(p.name == ".dreambooth-nb.lock" for p in folder.iterdir()):
            shutil.rmtree(folder, ignore_errors=True)
    except OSError:
        pass

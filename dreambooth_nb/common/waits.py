"""Waits said out loud: before a long first call (a graph compiling), one line with what is happening and how long
it took last time on this machine, and seconds counted on the progress bar while it runs."""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time

from .files import cache_dir, write_json_atomic

TIMES_FILE = "wait_times.json"  # in the cache folder: {what: seconds it took last time}
TICK_SECONDS = 2.0  # how often the seconds so far are shown


def last_seconds(key: str) -> float | None:
    """How long the wait `key` took the last time it ran on this machine (None: never measured)."""
    path = cache_dir() / TIMES_FILE
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember_seconds(key: str, seconds: float) -> None:
    """Record how long the wait `key` took (a cache that cannot be written is no reason to fail)."""
    path = cache_dir() / TIMES_FILE
    try:
        times = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        times = {}  # none yet, or unreadable: start again
    if not isinstance(times, dict):
        times = {}
    times[key] = round(seconds, 1)
    try:
        write_json_atomic(path, times)
    except OSError:
        pass


def expectation(key: str, first_time: str) -> str:
    """'about 40 s last time on this machine', or `first_time` when it was never measured here."""
    seconds = last_seconds(key)
    return first_time if seconds is None else f"about {seconds:.0f} s last time on this machine"


def counter_can_redraw() -> bool:
    """True where a line can be drawn over (a notebook's display, a terminal's "\\r"); in a log file every tick would
    add text."""
    from .viz import in_notebook

    return in_notebook() or bool(getattr(sys.stderr, "isatty", lambda: False)())


class LiveLine:
    """One line of text redrawn in place: in a notebook, one output updated (not a new output per tick, which a
    saved notebook would keep hundreds of); on a terminal, a "\\r" line on stderr."""

    def __init__(self):
        from .viz import in_notebook

        self.handle = None
        if in_notebook():
            from IPython.display import display

            self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def show(self, text: str) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        else:
            print(f"\r{text}", end="", file=sys.stderr, flush=True)

    def finish(self, text: str) -> None:
        if self.handle is not None:
            self.handle.update({"text/plain": text}, raw=True)
        else:
            print(f"\r{text}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def said_wait(what: str, key: str, bar=None, first_time: str = "the first time here: up to a few minutes on a CPU",
              show: bool = True):
    """Say `what` is starting and how long it took last time; while it runs, the seconds so far are shown (on the
    progress bar `bar` when given, else on their own line); afterwards the time is recorded for next time. A wait
    that fails or is interrupted records nothing."""
    if show:
        print(f"{what} ({expectation(key, first_time)}) ...", file=sys.stderr, flush=True)
    line = LiveLine() if show and bar is None and counter_can_redraw() else None
    start = time.perf_counter()
    done = threading.Event()

    def tick():
        while not done.wait(TICK_SECONDS):
            seconds = f"{what}: {time.perf_counter() - start:.0f} s"
            if bar is not None:
                bar.set_postfix_str(seconds, refresh=True)
            else:
                line.show(f"  {seconds}")

    ticker = threading.Thread(target=tick, daemon=True) if (show and bar is not None) or line is not None else None
    if ticker is not None:
        ticker.start()
    finished = False
    try:
        yield
        finished = True
    finally:
        done.set()
        if ticker is not None:
            ticker.join(timeout=2 * TICK_SECONDS)
        if line is not None and not finished:  # the counter's line ends, so the error starts on its own line
            line.finish(f"  {what}: stopped after {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    remember_seconds(key, seconds)
    if line is not None:
        line.finish(f"  {what}: done in {seconds:.0f} s")
    elif show and bar is None:
        print(f"  {what}: done in {seconds:.0f} s", file=sys.stderr, flush=True)

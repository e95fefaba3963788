"""A compile cache that cannot serve the wrong graph: the first training step of a run compiled before loads its graph
from disk (about 1 s on the toy model instead of 15-20).

MindSpore's own cache (`enable_compile_cache`) finds a graph by its position among the graphs a process compiled while
the cache was on, in one folder per process (the first path given), and checks only the Python files of the entry
script: a changed batch size at the same position was served the old graph and crashed. So the cache here is on for
one block of compiling per process only, in a folder named by a digest of everything that shapes the graph (what it
computes, the model's weights' names, shapes and types, the settings, the package's source, the entry script, the
MindSpore and mindone versions): its graphs are always the first the cache numbers, and a folder only ever holds the
graphs of one key. Anything that changes the graph changes the folder and compiles anew.

Where it lives: `graphs/` in the package's cache folder (`~/.cache/dreambooth_nb/graphs`, or under
DREAMBOOTH_NB_CACHE); delete that folder to clear it. DREAMBOOTH_NB_GRAPH_CACHE=0 turns it off; a folder given there is used
instead.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import sys
from pathlib import Path

from .files import cache_dir

GRAPH_CACHE_ENV = "DREAMBOOTH_NB_GRAPH_CACHE"  # "0": compile every graph anew; a folder: keep the graphs there
FIRST_GRAPH = "compile_cache_0.mindir"  # MindSpore's name for the first graph a process cached
_claimed: list[str] = []  # the key this process's cache serves (MindSpore keeps one cache folder a process)


def graphs_dir() -> Path:
    """Where compiled graphs are kept, one folder per graph key: DREAMBOOTH_NB_GRAPH_CACHE when it names a folder, else
    graphs/ in the package's cache folder."""
    chosen = os.environ.get(GRAPH_CACHE_ENV, "1")
    return Path(chosen) if chosen not in ("0", "1", "") else cache_dir() / "graphs"


def graph_cache_on() -> bool:
    """False when DREAMBOOTH_NB_GRAPH_CACHE=0 (each graph compiles anew)."""
    return os.environ.get(GRAPH_CACHE_ENV, "1") != "0"


@functools.cache
def package_source_digest() -> str:
    """A digest of every Python file of this package: a changed line of code is a changed graph."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def network_signature(nets: dict) -> dict:
    """Each network's class and its weights' names, shapes, types and trainability: what a graph binds to."""
    return {name: [type(net).__name__, *[(p.name, tuple(p.shape), str(p.dtype), bool(p.requires_grad))
                                          for p in net.get_parameters()]]
            for name, net in sorted(nets.items())}


def graph_key(graph: str, parts: dict) -> str:
    """The folder name for a graph: its kind and a digest of `parts` with the code and versions that compile it."""
    from .runtime import installed_version

    payload = {"graph": graph, "parts": parts, "package": package_source_digest(),
               "entry": os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "",
               "mindspore": installed_version("mindspore"), "mindone": installed_version("mindone"),
               "python": sys.version.split()[0]}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return f"{graph.replace(' ', '-')}-{digest}"


def cached_graph_ready(folder: Path) -> bool:
    """True when `folder` holds a graph compiled before (any rank's)."""
    return any(folder.glob(f"rank_*/graph_cache/{FIRST_GRAPH}"))


@contextlib.contextmanager
def cached_compile(graph: str, parts: dict):
    """Compile inside this block with MindSpore's compile cache on, in the folder of this graph's key; yields True
    when a graph compiled before is there to load. Only the first block of a process caches (yields None for later
    ones, and when the cache is off or its folder cannot be written): see the module's docstring."""
    if not graph_cache_on() or _claimed:
        yield None
        return
    folder = graphs_dir() / graph_key(graph, parts)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        yield None
        return
    import mindspore as ms

    _claimed.append(folder.name)
    list_only_the_entry_script()
    ms.set_context(enable_compile_cache=True, compile_cache_path=str(folder))
    try:
        yield cached_graph_ready(folder)
    finally:
        ms.set_context(enable_compile_cache=False)


def list_only_the_entry_script() -> None:
    """MindSpore checks a cached graph against the files its entry script imports, found by building a module object
    for each import (importlib's module_from_spec): for `import sys` in a Jupyter kernel's launcher that made a new
    `sys` whose stderr ipykernel cannot tee (the next cell never answered), and a relative import in a package's
    __main__ (`python -m dreambooth_nb.train`) raised. Here it lists the entry script alone: the key already holds
    every file of this package and the entry script's path."""
    from mindspore.common import api

    api._get_compile_cache_dep_files = lambda: [api.entry_script_path] if api.entry_script_path else []


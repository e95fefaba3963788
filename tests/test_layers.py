"""The package is built in floors: a module imports only from its own floor or the floors below, never from a
later chapter, and no two modules import each other in a circle. Imports inside functions count too.

For example, `data.py` (chapter 01) once made its training batches with `from .train.engine import BatchMaker`
inside a function: an arrow from chapter 01 to chapter 04. test_a_hidden_upward_import_is_found shows that the
checker reports exactly that edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "dreambooth_nb"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
# bottom to top; a name is the first part of a module's path inside the package
FLOORS = (
    ("common",),  # ground floor: shared by every chapter
    ("data",),  # 01
    ("models", "sampling"),  # 02
    ("losses", "batches", "guide_data", "prior"),  # 03
    ("train",),  # 04
    ("infer",),  # 05
    ("toyworld",),  # 06
    ("widgets",),  # 07
    ("lora",),  # 08
    ("sdxl",),  # 09
    ("demo", "check", "push", "export", "train_lora", "train_sdxl_lora", ""),  # command lines and the `db` facade
)
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}


def module_name(path: Path) -> str:
    """dreambooth_nb.x.y for ROOT/x/y.py (and dreambooth_nb.x for ROOT/x/__init__.py)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute module name, line) of every package-internal import in the source, function bodies included."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            found.append((stem, node.lineno))
            found += [(f"{stem}.{alias.name}", node.lineno) for alias in node.names]
    return [(name, line) for name, line in found if name == PACKAGE or name.startswith(PACKAGE + ".")]


def existing_module(name: str) -> str | None:
    """The longest prefix of `name` that is a module or package of ours (an imported name may be a function)."""
    parts = name.split(".")
    while parts:
        path = ROOT.parent.joinpath(*parts)
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def floor_name(module: str) -> str:
    """The first part of a module's path inside the package ('' for the package itself)."""
    return module.split(".")[1] if "." in module else ""


def edges(sources: dict[str, tuple[str, bool]]) -> set[tuple[str, str, int]]:
    """(importer, imported, line) for every import between two different modules of ours."""
    out = set()
    for module, (source, is_package) in sources.items():
        for name, line in imported_modules(source, module, is_package):
            target = existing_module(name)
            if target is not None and target != module and not module.startswith(target + "."):
                out.add((module, target, line))  # a module's own parent packages always load first: not an arrow
    return out


def violations(all_edges) -> list[str]:
    """Each import that reaches a higher floor (or a module no floor names)."""
    out = []
    for importer, imported, line in sorted(all_edges):
        low, high = floor_name(importer), floor_name(imported)
        if low not in FLOOR_OF or high not in FLOOR_OF:
            out.append(f"{importer} or {imported} is on no floor: add it to FLOORS")
        elif FLOOR_OF[high] > FLOOR_OF[low]:
            out.append(f"{importer} (line {line}) imports {imported}: floor '{low}' reaches up to floor '{high}'")
    return out


def cycles(all_edges) -> list[list[str]]:
    """Circles of imports between modules (each found once, as the path that closes it)."""
    graph: dict[str, set[str]] = {}
    for importer, imported, _ in all_edges:
        if not imported.startswith(importer + "."):  # a package importing its own submodule is not a circle
            graph.setdefault(importer, set()).add(imported)
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def package_sources() -> dict[str, tuple[str, bool]]:
    return {module_name(p): (p.read_text(encoding="utf-8"), p.name == "__init__.py") for p in ROOT.rglob("*.py")}


def test_every_module_is_on_a_floor():
    names = {floor_name(m) for m in package_sources()}
    assert names <= set(FLOOR_OF), f"add to FLOORS: {sorted(names - set(FLOOR_OF))}"


def test_no_module_imports_from_a_higher_floor():
    assert violations(edges(package_sources())) == []


def test_no_import_cycles():
    assert cycles(edges(package_sources())) == []


def test_a_hidden_upward_import_is_found():
    """The edge data (01) -> train (04), written inside a function as it once was, is reported."""
    sources = package_sources()
    source, is_package = sources[f"{PACKAGE}.data"]
    hidden = source + "\n\ndef training_batch(config, components):\n    from .train.engine import BatchMaker\n"
    sources[f"{PACKAGE}.data"] = (hidden, is_package)
    found = violations(edges(sources))
    assert len(found) == 1 and "dreambooth_nb.data" in found[0] and "dreambooth_nb.train.engine" in found[0]


@pytest.mark.parametrize("snippet, importer", [
    ("from ..models import load_components", "common.runtime"),  # the ground floor reaching chapter 02
    ("from .toyworld import scenes", "data"),  # chapter 01 reaching chapter 06
    ("from .infer import generate", "prior"),  # chapter 03 reaching chapter 05
])
def test_the_edges_of_the_old_circle_are_reported(snippet, importer):
    module = f"{PACKAGE}.{importer}"
    source = f"def f():\n    {snippet}\n"
    is_package = False
    found = [e for e in edges({module: (source, is_package)})]
    assert violations(found), (snippet, found)


def test_cycles_are_found():
    assert cycles({("a.x", "a.y", 1), ("a.y", "a.z", 2), ("a.z", "a.x", 3)}) == [["a.x", "a.y", "a.z", "a.x"]]

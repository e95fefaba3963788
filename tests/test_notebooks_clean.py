"""Committed notebooks carry no outputs, no widget state, short code cells, and the usual shape."""

import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def code_lines(cell) -> list[str]:
    source = "".join(cell["source"])
    return [l for l in source.splitlines() if l.strip() and not l.strip().startswith("#")]


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found in notebooks/"
    assert NOTEBOOKS[0].name.startswith("00_")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stripped(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    assert "widgets" not in nb.get("metadata", {}), "widget state is committed; run `make strip`"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    ids = [cell.get("id") for cell in nb["cells"]]
    assert None not in ids and len(set(ids)) == len(ids), "cells need unique ids (nbformat 4.5); run `make strip`"
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            assert not cell["outputs"], f"cell {i} has outputs; run `make strip`"
            assert cell["execution_count"] is None, f"cell {i} has an execution count; run `make strip`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_shape(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    first_markdown = "".join(cells[0]["source"])
    assert cells[0]["cell_type"] == "markdown" and first_markdown.startswith("# ")
    assert "In this notebook you will" in first_markdown
    code = [c for c in cells if c["cell_type"] == "code"]
    assert "import dreambooth_nb as db" in "".join(code[0]["source"])
    too_long = [i for i, c in enumerate(code) if len(code_lines(c)) > 8]
    assert not too_long, f"code cells {too_long} are longer than 8 lines: move the logic into dreambooth_nb"


def markdown(nb) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_has_exercises_with_answers_and_asks_for_predictions(path):
    """An Exercises section whose every exercise has its answer in a collapsed <details> block, and at least one
    'predict, then run' moment before a cell."""
    text = markdown(json.loads(path.read_text(encoding="utf-8")))
    assert "## What you saw" in text, "a closing 'What you saw' section"
    exercises = text.split("## Exercises", 1)
    assert len(exercises) == 2, "an '## Exercises' section"
    section = exercises[1].split("\n## ", 1)[0]
    numbered = [line for line in section.splitlines() if re.match(r"\d+\. ", line)]
    assert len(numbered) >= 2, "at least two numbered exercises"
    assert section.count("<details>") >= len(numbered) and section.count("</details>") == section.count("<details>"), \
        "every exercise has its answer in a <details> block"
    assert "**Predict" in text, "a 'Predict ...' prompt before a cell"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_cell_hard_codes_a_guidance_scale(path):
    """Sampling uses the model's documented guidance (db.guidance_for); only the guidance section varies it, by name."""
    import re

    nb = json.loads(path.read_text(encoding="utf-8"))
    literal = re.compile(r"guidance_scale\s*=\s*[0-9.]")
    offenders = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and literal.search("".join(c["source"]))]
    assert not offenders, offenders

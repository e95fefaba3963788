"""pyproject.toml, environment.yml and binder/environment.yml must pin the same versions."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(requirements) -> dict[str, str]:
    """{package: version} for every `name==version` line; other lines must not be there."""
    found = {}
    for line in requirements:
        line = line.strip()
        if line in ("-e .", "."):
            continue
        match = PIN.match(line)
        assert match, f"unpinned requirement {line!r}: pin it with =="
        found[normalise(match.group(1))] = match.group(2)
    return found


def pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return pins(requirements)


def conda_pins(path: Path) -> tuple[dict[str, str], list]:
    env = yaml.safe_load(path.read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    return pins(pip_section), conda


def test_environment_yml_matches_pyproject():
    env_pins, conda = conda_pins(ROOT / "environment.yml")
    assert env_pins == pyproject_pins()
    assert "python=3.11" in conda


def test_binder_environment_matches_pyproject():
    env_pins, conda = conda_pins(ROOT / "binder" / "environment.yml")
    assert env_pins == pyproject_pins()
    assert "python=3.11" in conda


def test_pin_parser_rejects_unpinned_lines():
    import pytest

    with pytest.raises(AssertionError, match="unpinned"):
        pins(["mindspore>=2.7"])
    assert pins(["MindSpore==2.7.1"]) == {"mindspore": "2.7.1"}


def test_runtime_tested_pair_is_the_pinned_pair():
    from dreambooth_nb.common.runtime import TESTED_VERSIONS

    pinned = pyproject_pins()
    assert {k: pinned[k] for k in TESTED_VERSIONS} == TESTED_VERSIONS

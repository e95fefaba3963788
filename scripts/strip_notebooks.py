"""Strip outputs, execution counts and volatile metadata from notebooks (run before committing)."""

import hashlib
import json
import sys
from pathlib import Path

KEEP_NOTEBOOK_METADATA = {"kernelspec", "language_info"}


def strip(path: Path) -> bool:
    """Clean one notebook in place; True when it changed."""
    text = path.read_text(encoding="utf-8")
    nb = json.loads(text)
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k in KEEP_NOTEBOOK_METADATA}
    nb["metadata"].get("language_info", {}).pop("version", None)
    for index, cell in enumerate(nb["cells"]):
        if "id" not in cell:  # nbformat 4.5 requires one; derive it so it is stable
            cell["id"] = hashlib.sha1(f"{index}:{''.join(cell['source'])}".encode()).hexdigest()[:8]
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k == "tags"}
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    new = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new, encoding="utf-8")
        return True
    return False


if __name__ == "__main__":
    changed = [p for p in map(Path, sys.argv[1:]) if strip(p)]
    print(f"stripped {len(changed)} of {len(sys.argv) - 1} notebooks")

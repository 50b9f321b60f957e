"""The notebooks are stored clean and follow the project's notebook conventions.

Outputs and execution counts stay out of git (they bloat diffs and can carry local paths or
images of the data); CI executes the notebooks with ``pytest --nbmake`` instead. Strip a
notebook after running it with ``nbstripout notebooks/*.ipynb`` (or Jupyter's "Clear All
Outputs" before saving).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_data.ipynb", "02_train.ipynb", "03_cross_dataset.ipynb", "04_features.ipynb")
NOTEBOOKS = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code(nb: dict) -> str:
    return "\n".join(
        "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for c in nb["cells"]
        if c["cell_type"] == "code"
    )


def test_the_four_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert set(EXPECTED) <= names, f"missing: {set(EXPECTED) - names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_no_outputs_or_execution_counts(path: Path):
    nb = _load(path)
    dirty = [
        i for i, cell in enumerate(nb["cells"])
        if cell["cell_type"] == "code"
        and (cell.get("outputs") or cell.get("execution_count") is not None
             or "execution" in cell.get("metadata", {}))
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} hold outputs or execution counts; "
        f"run `nbstripout {path.relative_to(NOTEBOOKS_DIR.parent)}` before committing."
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_valid_nbformat_4_with_a_python_kernel(path: Path):
    nb = _load(path)
    assert nb["nbformat"] == 4
    assert nb["metadata"]["kernelspec"]["language"] == "python"
    import nbformat  # a dev dependency (nbmake, jupyter): missing means a broken install
    nbformat.validate(nbformat.reads(path.read_text(encoding="utf-8"), as_version=4))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_uses_the_library_and_honours_small_mode(path: Path):
    code = _code(_load(path))
    # CI runs every notebook with LEUKDX_SMALL=1; a notebook that ignores it would train for real.
    assert 'os.environ.get("LEUKDX_SMALL") == "1"' in code
    assert "from leukdx" in code
    # Notebooks call leukdx; helpers imported from files next to them would hide library gaps.
    local = {p.stem for p in NOTEBOOKS_DIR.glob("*.py")}
    for name in local:
        assert f"import {name}" not in code and f"from {name} " not in code

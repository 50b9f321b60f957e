"""The layer picture of docs/architecture.md holds: a lower layer never imports a higher one.

Two checks: importing the modules of one layer in a fresh interpreter loads no module of a
higher layer (what a user of that layer pays for), and no ``import`` statement anywhere in a
module - at the top or inside a function - names a module of a higher layer.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "leukdx"

# Lowest first; the same table as docs/architecture.md ("Layers"). A module belongs to the
# layer of the longest prefix listed.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("leukdx.errors", "leukdx.io", "leukdx.runinfo", "leukdx.precision",
                    "leukdx.config")),
    ("data", ("leukdx.data",)),
    ("models", ("leukdx.models",)),
    ("measurement", ("leukdx.evaluation", "leukdx.evaluation.splits", "leukdx.evaluation.metrics",
                     "leukdx.evaluation.ledger", "leukdx.evaluation.stats",
                     "leukdx.evaluation.leakage", "leukdx.evaluation.compare", "leukdx.plots")),
    ("training", ("leukdx.train", "leukdx.tta", "leukdx.pretrain")),
    ("experiments", ("leukdx.evaluation.runner", "leukdx.evaluation.executors")),
    ("applications", ("leukdx.features", "leukdx.predict", "leukdx.export", "leukdx.modelcard",
                      "leukdx.explain")),
    ("interface", ("leukdx.cli", "leukdx.__main__")),
)
LAYER_NAMES = [name for name, _ in LAYERS]

# Lookups of a higher layer that are deliberate, each imported inside one function only.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    # validate_config checks names against the model and classifier registries.
    ("leukdx.config", "leukdx.models.backbones"): "validate_config",
    ("leukdx.config", "leukdx.models.strategies"): "validate_config",
    ("leukdx.config", "leukdx.models.weights"): "validate_config",
    ("leukdx.config", "leukdx.features.classifiers"): "validate_config",
}


def layer_of(module: str) -> int | None:
    """Index in :data:`LAYERS` of ``module``, or None for the bare ``leukdx`` package."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def package_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join(parts))
    return names


def _imports(module: str) -> list[tuple[str, str]]:
    """``(imported module, enclosing function or '<module>')`` for every leukdx import."""
    path = PACKAGE.parent / Path(*module.split("."))
    path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str]] = []

    def visit(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) \
                else where
            if isinstance(child, ast.Import):
                found.extend((alias.name, inner) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".")[: len(module.split(".")) - child.level
                                             + (1 if is_package else 0)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.append((target, inner))
                # "from leukdx.evaluation import runner" imports a submodule
                found.extend((f"{target}.{alias.name}", inner) for alias in child.names)
            elif (isinstance(child, ast.Call) and getattr(child.func, "attr", None)
                  == "import_module" and child.args
                  and isinstance(child.args[0], ast.Constant)):
                found.append((str(child.args[0].value), inner))
            visit(child, inner)

    visit(tree, "<module>")
    return [(name, where) for name, where in found if name.startswith("leukdx")
            and name in set(package_modules())]


def test_every_module_has_a_layer():
    unplaced = [m for m in package_modules() if m != "leukdx" and layer_of(m) is None]
    assert unplaced == [], f"add these modules to LAYERS and docs/architecture.md: {unplaced}"


def test_no_import_statement_names_a_higher_layer():
    upward = []
    for module in package_modules():
        own = layer_of(module)
        if own is None:
            continue
        for imported, where in _imports(module):
            theirs = layer_of(imported)
            if theirs is None or theirs <= own:
                continue
            if ALLOWED_UPWARD.get((module, imported)) == where:
                continue
            upward.append(f"{module} ({LAYER_NAMES[own]}, in {where}) imports {imported} "
                          f"({LAYER_NAMES[theirs]})")
    assert upward == []


@pytest.mark.parametrize("index", range(len(LAYERS)), ids=LAYER_NAMES)
def test_importing_a_layer_loads_no_higher_layer(index):
    # __main__ runs the command line when imported; cli stands for it.
    modules = [m for m in package_modules() if layer_of(m) == index
               and not m.endswith("__main__")]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('leukdx'))))\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=PACKAGE.parent, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    higher = [m for m in loaded if (layer_of(m) or 0) > index]
    assert higher == [], f"importing the {LAYER_NAMES[index]} layer loads {higher}"

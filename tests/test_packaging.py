"""pyproject.toml declares what the package imports, and imports what it declares."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
# imported only under `except ImportError` / `suppress(ImportError)`: used when s3fs / fsspec brought them
OPTIONAL_IMPORTS = {"botocore", "aiohttp"}
# declared, never imported: fsspec loads them by protocol
PLUGINS = {"s3fs"}


def _top_level_imports() -> set[str]:
    names = set()
    for path in (ROOT / "masklet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"masklet", "__future__"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_dependencies_are_what_the_package_imports() -> None:
    requirements = importlib.metadata.requires("masklet") or []  # as installed from pyproject.toml
    runtime = [r for r in requirements if "extra ==" not in r]
    declared = {_normalise(re.split(r"[\[<>=!~ ;(]", spec, maxsplit=1)[0]) for spec in runtime}
    distributions = importlib.metadata.packages_distributions()
    imported = {}
    for module in _top_level_imports() - OPTIONAL_IMPORTS:
        assert module in distributions, f"masklet imports {module!r}, which no installed distribution provides"
        imported[module] = {_normalise(d) for d in distributions[module]}
    undeclared = sorted(m for m, dists in imported.items() if not dists & declared)
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
    provided = set().union(*imported.values())
    unused = sorted(declared - provided - PLUGINS)
    assert not unused, f"declared but never imported by the package: {unused}"

"""The dependency rules of docs/architecture.md, held by reading every module's imports.

Imports inside functions count too: a rule broken lazily is still broken.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from masklet.config import MODEL_PRESETS
from masklet.model.presets import OWN_PRESETS, PRESETS
from masklet.weights import OFFICIAL, PACKAGED

PACKAGE = Path(__file__).parents[1] / "masklet"


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names a module imports (relative imports resolved), at any depth of its code."""
    found = set()
    package = _module(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


# (modules the rule applies to, imports they must not make, why)
RULES = [
    (
        ("masklet.model",),
        (
            "masklet.config",
            "masklet.io",
            "masklet.pipelines",
            "masklet.jobs",
            "masklet.api",
            "masklet.eval",
            "masklet.report",
            "masklet.train",
            "masklet.cli",
            "masklet.weights",
        ),
        "model imports nothing of masklet",
    ),
    (
        ("masklet.pipelines",),
        ("ray", "masklet.jobs", "masklet.io.storage", "fsspec", "s3fs", "boto3"),
        "pipelines never touch Ray or storage",
    ),
    (
        ("masklet.io",),
        ("masklet.model", "masklet.pipelines", "masklet.jobs", "ray"),
        "io never touches models, pipelines or Ray",
    ),
    (
        ("masklet.eval", "masklet.report", "masklet.review"),
        ("masklet.jobs", "ray"),
        "eval, report and review read outputs through io and never import jobs",
    ),
    (
        (
            "masklet.config",
            "masklet.weights",
            "masklet.api",
            "masklet.eval",
            "masklet.report",
            "masklet.train",
            "masklet.synth",
            "masklet.io",
            "masklet.pipelines",
            "masklet.model",
        ),
        ("ray",),
        "only jobs and the CLI know Ray exists",
    ),
]


@pytest.mark.parametrize(("scope", "banned", "why"), RULES, ids=[r[2] for r in RULES])
def test_dependency_rule(scope: tuple[str, ...], banned: tuple[str, ...], why: str) -> None:
    broken = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        if _under(module, *scope)
        for name in names
        if _under(name, *banned) and not _under(name, module)
    )
    assert not broken, f"{why}: " + "; ".join(broken)


@pytest.mark.parametrize(
    ("module", "absent"),
    [
        ("masklet.jobs.progress", ("torch", "ray")),  # the progress printer
        ("masklet.jobs.run_lease", ("torch", "ray")),
        ("masklet.jobs.shard", ("ray",)),  # the shard's work without Ray
        ("masklet.jobs.chunks", ("torch", "ray")),  # a split video's chunks and stitch, without Ray
        ("masklet.jobs.split", ("torch", "ray")),  # what the driver plans and resumes of split videos
        ("masklet.jobs.job_record", ("torch", "ray")),
        ("masklet", ("torch", "ray")),
        ("masklet.cli", ("torch", "ray")),
    ],
)
def test_light_imports(module: str, absent: tuple[str, ...]) -> None:
    code = f"import sys, {module}; print([m for m in {list(absent)!r} if m in sys.modules])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "[]", f"importing {module} loads {loaded}"


def test_the_configs_model_names_are_the_models_presets() -> None:
    assert set(MODEL_PRESETS) == set(PRESETS) | set(OWN_PRESETS)
    assert set(OFFICIAL) == set(PRESETS) and set(PACKAGED) == set(OWN_PRESETS)  # each has its weights named


def test_every_exception_of_masklet_survives_pickling() -> None:
    """Exceptions cross the Ray boundary pickled: one that does not unpickle reaches the driver as
    "Failed to deserialize exception", its type, message and URI lost."""
    import importlib
    import pickle

    for name in MODULES:
        if name != "masklet.__main__":  # runs the CLI
            importlib.import_module(name)
    classes = {c for c in _subclasses(BaseException) if c.__module__.startswith("masklet.")}
    assert len(classes) > 10
    samples = {
        "StorageError": ("read s3://b/k failed", "s3://b/k", True),
        "VideoDecodeError": ("clip", "the file is truncated"),
        "PromptError": ("video 'v': bad box", "v", 3, 1),
    }
    for cls in classes:
        exc = cls(*samples.get(cls.__name__, ("a message naming s3://b/k",)))
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is cls and str(back) == str(exc) and vars(back) == vars(exc), cls


def _subclasses(cls: type) -> set[type]:
    return {s for c in cls.__subclasses__() for s in (c, *_subclasses(c))}

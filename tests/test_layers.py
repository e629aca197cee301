"""The dependency direction of docs/architecture.md, checked on every module's imports.

``api`` and ``workers`` may use ``workflows``, ``activities`` and ``replicant``; ``activities``
uses ``replicant``; ``workflows`` uses only ``temporalio``, the standard library and
``replicant.contracts``; ``replicant`` uses only itself; nobody imports ``api``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("api", "workers", "activities", "workflows", "replicant")
# What each layer may import of the project (besides itself).
ALLOWED = {
    "api": ("workflows", "activities", "replicant"),
    "workers": ("workflows", "activities", "replicant"),
    "activities": ("replicant",),
    "workflows": ("replicant.contracts",),
    "replicant": (),
}
# Entry points that start the other layers (the CLI starts workers and the API).
ENTRY_POINTS = {"replicant.cli": ("workers",)}
# Besides the standard library, the only outside package a workflow may import.
WORKFLOW_LIBRARIES = ("temporalio",)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (at any depth, inside functions too), with its line."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                package = _module_name(path, root).split(".")
                if path.name != "__init__.py":
                    package.pop()
                base = ".".join(package[: len(package) - node.level + 1])
                found.append((node.lineno, f"{base}.{node.module}" if node.module else base))
            elif node.module is not None:
                found.append((node.lineno, node.module))
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations(root: Path = ROOT) -> list[str]:
    """Imports that break the direction, as ``file:line: module imports name``."""
    found = []
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            module = _module_name(path, root)
            allowed = (layer, *ALLOWED[layer], *ENTRY_POINTS.get(module, ()))
            for line, name in _imports(path, root):
                top = name.split(".")[0]
                if top in LAYERS:
                    ok = _within(name, allowed)
                elif layer == "workflows":
                    ok = top in sys.stdlib_module_names or top in WORKFLOW_LIBRARIES
                else:
                    ok = True
                if not ok:
                    found.append(f"{path.relative_to(root)}:{line}: {module} imports {name}")
    return found


def test_imports_point_one_way() -> None:
    assert violations() == []


def test_the_check_catches_an_import_against_the_direction(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "activities" / "bad.py").write_text("from workers.runners import RunnerPool\n")
    (tmp_path / "replicant" / "bad.py").write_text("def f():\n    import api.app\n")
    (tmp_path / "workflows" / "bad.py").write_text("import httpx\nfrom replicant import db\n")
    (tmp_path / "workflows" / "good.py").write_text(
        "import asyncio\nfrom temporalio import workflow\nfrom replicant.contracts import X\n"
    )
    assert violations(tmp_path) == [
        "activities/bad.py:1: activities.bad imports workers.runners",
        "workflows/bad.py:1: workflows.bad imports httpx",
        "workflows/bad.py:2: workflows.bad imports replicant",
        "replicant/bad.py:2: replicant.bad imports api.app",
    ]


def test_importing_the_api_loads_neither_the_runner_pool_nor_its_http_client() -> None:
    code = (
        "import sys, api.app\n"
        "print(sorted(m for m in ('aiohttp', 'workers.runners', 'activities.predictions')"
        " if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

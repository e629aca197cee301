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


def _project_modules(root: Path) -> dict[str, Path]:
    return {
        _module_name(path, root): path
        for layer in LAYERS
        for path in sorted((root / layer).rglob("*.py"))
        if "migrations" not in path.parts
    }


def _edges(root: Path) -> dict[str, set[str]]:
    """Each module's imports of other project modules (``from a import b``: ``a.b`` when
    that is a module), at any depth, ``TYPE_CHECKING`` blocks included."""
    modules = _project_modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [
                    f"{node.module}.{a.name}"
                    if f"{node.module}.{a.name}" in modules
                    else node.module
                    for a in node.names
                ]
            edges[module] |= {t for t in targets if t in modules and t != module}
    return edges


def circles(root: Path = ROOT) -> list[frozenset[str]]:
    """The import circles between modules (strongly connected sets of two or more)."""
    edges = _edges(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(frozenset(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_between_modules() -> None:
    assert [sorted(c) for c in circles()] == []


def test_route_modules_import_no_route_modules() -> None:
    """A route module is not a library for other routes: what two routes share lives
    outside ``api/routes/``."""
    found = [
        f"{module} imports {name}"
        for module, names in _edges(ROOT).items()
        if module.startswith("api.routes.")
        for name in names
        if name.startswith("api.routes.")
    ]
    assert found == []


def test_the_circle_check_catches_two_modules_importing_each_other(tmp_path: Path) -> None:
    for layer in LAYERS:
        (tmp_path / layer).mkdir()
    (tmp_path / "replicant" / "a.py").write_text("from replicant import b\n")
    (tmp_path / "replicant" / "b.py").write_text("def f():\n    import replicant.a\n")
    (tmp_path / "replicant" / "c.py").write_text("from replicant.a import x\n")
    assert circles(tmp_path) == [frozenset({"replicant.a", "replicant.b"})]


# The longest function the project's code may have, in lines (its signature and docstring
# too); migrations are written once and never read again.
MAX_FUNCTION_LINES = 80


def long_functions(root: Path = ROOT, packages: tuple[str, ...] = LAYERS) -> list[str]:
    """The functions of ``packages`` longer than ``MAX_FUNCTION_LINES`` (migrations aside), as
    ``file:line: name (lines)``."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "migrations" in path.relative_to(root).parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        where = path.relative_to(root)
                        found.append(f"{where}:{node.lineno}: {node.name} ({lines})")
    return found


def test_no_function_is_over_the_length_limit() -> None:
    assert long_functions() == []


def test_the_length_check_catches_a_long_function(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    for package in LAYERS:
        (tmp_path / package / "migrations").mkdir(parents=True)
        (tmp_path / package / "migrations" / "old.py").write_text(f"def f():\n{body}")
    (tmp_path / "api" / "long.py").write_text(f"def short():\n    pass\n\n\ndef f():\n{body}")
    (tmp_path / "replicant" / "long.py").write_text(
        "class C:\n    async def g(self):\n" + body.replace("    ", "        ")
    )
    assert long_functions(tmp_path) == [
        f"api/long.py:5: f ({MAX_FUNCTION_LINES + 1})",
        f"replicant/long.py:2: g ({MAX_FUNCTION_LINES + 1})",
    ]

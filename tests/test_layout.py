"""The layout rules of the code base, checked with ``ast`` so the layout cannot rot silently.

Layers, top to bottom; a module may import from its own layer or a layer above it, never one
below (lower layers build on higher ones):

1. ``envs.core``, ``envs.render``: geometry and pictures (numpy, scipy, SimpleITK only)
2. ``envs.io``: the file boundary, and the one atomic writer
3. ``envs.data``: cases, manifests, splits, cache, augmentation
4. ``envs.phantom``: synthetic CT
5. ``envs.tasks``, ``envs``: the worlds and Gymnasium envs
6. ``agents.networks``, ``agents.replay``: torch and SB3 only
7. ``agents.dqn``, ``agents.checkpoints``, ``agents.baselines``
8. ``agents.greedy``, ``agents.search``
9. ``agents.experiments``, ``agents``
10. the scripts ``train.py`` and ``evaluate.py``, ``bench/``, ``tests/`` (nothing imports them)

Imports of a package's parent (``import envs.tasks`` runs ``envs/__init__``) are implicit and
not counted; imports written inside functions (lazy imports) are.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
LAYERS: tuple[tuple[str, ...], ...] = (
    ("envs.core", "envs.render"),
    ("envs.io",),
    ("envs.data",),
    ("envs.phantom",),
    ("envs.tasks", "envs"),
    ("agents.networks", "agents.replay"),
    ("agents.dqn", "agents.checkpoints", "agents.baselines"),
    ("agents.greedy", "agents.search"),
    ("agents.experiments", "agents"),
)
SCRIPTS = ("train", "evaluate")
ATOMIC_WRITER = "envs.io.atomic"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_files() -> dict[str, Path]:
    files = {}
    for package in ("envs", "agents"):
        for path in sorted((ROOT / package).rglob("*.py")):
            files[_module_name(path)] = path
    return files


MODULES = _package_files()
CHECKED = {**MODULES, **{name: ROOT / f"{name}.py" for name in SCRIPTS}}


def _layer(module: str) -> int | None:
    """The layer of ``module``: the longest matching prefix decides."""
    best, best_length = None, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(name: str, path: Path) -> list[tuple[str, tuple[str, ...], int]]:
    """(imported module, imported names, line) for every import in the file, lazy ones included."""
    found = []
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.extend((alias.name, (), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(name, node, is_package)
            found.append((target, tuple(alias.name for alias in node.names), node.lineno))
    return found


def _edges(name: str, path: Path) -> set[str]:
    """Project modules that ``name`` imports (``from pkg import sub`` counts as ``pkg.sub``)."""
    edges = set()
    for target, names, _ in _imports(name, path):
        if target.split(".")[0] not in ("envs", "agents", *SCRIPTS):
            continue
        for imported in names:
            if f"{target}.{imported}" in MODULES:
                edges.add(f"{target}.{imported}")
                break
        else:
            edges.add(target)
    return edges


def _python_files() -> list[Path]:
    files = [*MODULES.values(), *(ROOT / f"{name}.py" for name in SCRIPTS)]
    for folder in ("bench", "tests"):
        files.extend(sorted((ROOT / folder).rglob("*.py")))
    return files


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_module_is_short(name: str) -> None:
    lines = CHECKED[name].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{CHECKED[name]}: {lines} lines; split it (at most {MAX_LINES})"


@pytest.mark.parametrize("path", _python_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_nothing_imports_a_script(path: Path) -> None:
    name = _module_name(path)
    bad = [
        f"line {line}: {target}"
        for target, _, line in _imports(name, path)
        if target.split(".")[0] in SCRIPTS and name not in SCRIPTS
    ]
    assert not bad, f"{path}: imports a script (move the code into agents/experiments): {bad}"


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_no_private_names_across_modules(name: str) -> None:
    bad = []
    for target, names, line in _imports(name, CHECKED[name]):
        if target.split(".")[0] not in ("envs", "agents") or target == name:
            continue
        bad += [f"line {line}: {target}.{n}" for n in names if n.startswith("_") and n != "__version__"]
    assert not bad, f"{CHECKED[name]}: imports private names of another module: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name: str) -> None:
    own = _layer(name)
    assert own is not None, f"{name}: not in any layer of tests/test_layout.py; place it"
    bad = []
    for target in _edges(name, MODULES[name]):
        layer = _layer(target)
        if layer is not None and layer > own:
            bad.append(f"{target} (layer {layer + 1})")
    assert not bad, f"{name} (layer {own + 1}) imports from lower layers: {bad}"


def test_no_import_cycles() -> None:
    graph = {name: _edges(name, path) & set(CHECKED) for name, path in CHECKED.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                cycles.append([*stack[stack.index(child) :], child])
            elif child not in state:
                visit(child, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles (lazy imports count): " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", sorted(CHECKED))
def test_os_replace_only_in_the_atomic_writer(name: str) -> None:
    if name == ATOMIC_WRITER:
        return
    tree = ast.parse(CHECKED[name].read_text(encoding="utf-8"))
    calls = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") and _is_os(node.value)
    ]
    assert not calls, f"{CHECKED[name]}: os.replace/os.rename at lines {calls}; use {ATOMIC_WRITER}"


def _is_os(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "os"


def test_the_rules_catch_what_they_should(tmp_path: Path) -> None:
    """The checker itself: each rule fires on a small bad example."""
    assert _layer("envs.tasks.landmark") == 4
    assert _layer("envs.core.volume") == 0
    assert _layer("agents.experiments.config") == 8
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom envs.tasks.landmark import _hidden\nimport train\nos.replace('a', 'b')\n")
    imports = _imports("envs.core.bad", bad)
    assert ("envs.tasks.landmark", ("_hidden",), 2) in imports
    assert any(target == "train" for target, _, _ in imports)
    assert _layer("envs.tasks.landmark") > _layer("envs.core.bad")
    tree = ast.parse(bad.read_text())
    assert any(
        isinstance(n, ast.Attribute) and n.attr == "replace" and _is_os(n.value) for n in ast.walk(tree)
    )

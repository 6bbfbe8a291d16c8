"""The package's architecture, checked: layers import only downwards, no import cycles, and
no function or class longer than the limit a reader can hold in view."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "rc2l"
# Lower number = lower layer. A module may import its own layer or lower ones; `data` is a
# side branch that imports none of models/losses/engine/infer.
LAYERS = {
    "config": 0,
    "errors": 0,
    "provenance": 0,
    "data": 1,
    "models": 1,
    "losses": 2,
    "engine": 3,
    "infer": 4,
    "api": 5,
    "cli": 6,
    "demo": 6,
    "__main__": 6,
    "__init__": 5,
}
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 250


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG.parent).with_suffix("").parts): p for p in PKG.rglob("*.py")}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _dynamic_import(node: ast.AST) -> str | None:
    """The literal module name of ``__import__("m")`` or ``importlib.import_module("m")``."""
    if not (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)):
        return None
    f = node.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name in ("__import__", "import_module") and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported rc2l module, at module level?) for every import in the file, including
    ``__import__`` / ``importlib.import_module`` calls with a literal name; ``from rc2l.x import
    y`` counts as importing ``rc2l.x.y`` when that is a module."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    modules = _modules()
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rc2l") and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found += [(m, id(node) in top) for m in subs or [node.module]]
        elif isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names if a.name.startswith("rc2l")]
        elif (name := _dynamic_import(node)) and name.startswith("rc2l"):
            found.append((name, False))
    return found


def test_layers_only_import_downwards():
    bad = []
    for mod, path in _modules().items():
        src = _layer(mod)
        for imp, _ in _imports(path):
            dst = _layer(imp)
            if src == "data" and dst in ("models", "losses", "engine", "infer"):
                bad.append(f"{mod} imports {imp} (data imports none of the model/loss/engine/infer layers)")
            elif LAYERS.get(dst, 0) > LAYERS.get(src, 0) and not (src == "models" and dst == "data"):
                bad.append(f"{mod} (layer {src}) imports {imp} (layer {dst}, above it)")
            elif src == "models" and dst == "data":
                bad.append(f"{mod} imports {imp}: models must not depend on data")
    assert not bad, "\n".join(bad)


def test_dynamic_imports_are_seen(tmp_path):
    src = tmp_path / "m.py"
    src.write_text('import importlib\n__import__("rc2l.infer.model")\nimportlib.import_module("rc2l.cli")\n')
    assert _imports(src) == [("rc2l.infer.model", False), ("rc2l.cli", False)]


def test_no_import_cycles_at_module_level():
    mods = _modules()
    graph = {m: {i for i, top in _imports(p) if top and i in mods and i != m} for m, p in mods.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph[m]:
            if state.get(n) == 1:
                cycles.append(" → ".join(stack[stack.index(n) :] + [n]))
            elif n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)


def _longer_than(path: Path, kinds: tuple[type, ...], limit: int) -> list[str]:
    """The definitions of these kinds in the file that span more than ``limit`` lines."""
    return [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines, line {n.lineno})"
        for n in ast.walk(ast.parse(path.read_text()))
        if isinstance(n, kinds) and n.end_lineno - n.lineno + 1 > limit
    ]


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_function_longer_than_the_limit(path):
    long = _longer_than(path, (ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION_LINES)
    assert not long, f"{path.name}: " + ", ".join(long)


@pytest.mark.parametrize("path", sorted(PKG.rglob("*.py")), ids=lambda p: str(p.relative_to(PKG)))
def test_no_class_longer_than_the_limit(path):
    long = _longer_than(path, (ast.ClassDef,), MAX_CLASS_LINES)
    assert not long, f"{path.name}: " + ", ".join(long)

"""The layout holds: core's subpackages depend on each other in one direction, no module imports itself back in a
circle, nothing in core imports Streamlit, and no file edits sys.path (the project is installed: `pip install -e .`).

Run alone: ``python -m pytest tests/test_architecture.py``. It reads the sources (ast), nothing is imported.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["pool", "engine", "map", "reuse", "zoo"]   # each may import the ones before it (and core's top modules)
UPWARD_ALLOWED = {("core.pool.userpool", "core.engine.embed")}  # the user's pool measures an added model


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ``core...`` module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def core_graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in (ROOT / "core").rglob("*.py")}
    return {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else None


def test_subpackages_import_downward_only():
    upward = {(a, b) for a, targets in core_graph().items() for b in targets
              if layer(a) is not None and layer(b) is not None and layer(b) > layer(a)}
    assert upward <= UPWARD_ALLOWED, f"imports that run back up ({' < '.join(LAYERS)}): {sorted(upward - UPWARD_ALLOWED)}"
    assert len(UPWARD_ALLOWED) <= 1


def test_no_module_imports_itself_back_in_a_circle():
    graph = core_graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_core_never_imports_streamlit():
    users = [module_name(p) for p in (ROOT / "core").rglob("*.py")
             if any(m.split(".")[0] == "streamlit" for m in imports_of(p))]
    assert users == []


def test_no_file_edits_sys_path():
    """The package is installed (``pip install -e .``): pages, bench and core import it like any library."""
    edits = [str(p.relative_to(ROOT)) for folder in ("core", "pages", "bench") for p in (ROOT / folder).rglob("*.py")
             if "sys.path.insert" in p.read_text(encoding="utf-8") or "sys.path.append" in p.read_text(encoding="utf-8")]
    edits += [name for name in ("app.py",) if "sys.path" in (ROOT / name).read_text(encoding="utf-8")]
    assert edits == []

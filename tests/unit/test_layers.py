"""The import graph runs one way: the layers of README.md's "Where things are".

Bottom to top: ``streams.contracts`` and ``streams.settings``; the rest of
``streams`` (the dataflow's steps, no torch); ``corpus`` (datasets, splits);
``model`` (torch) beside ``experiments`` and ``pipeline``; ``evaluation``;
``streamrec`` (the CLI), which nothing imports. Each package's ``__init__``
docstring says the same.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["streams", "corpus", "model", "experiments", "pipeline", "evaluation", "streamrec"]
#: What each package may import (itself included).
ALLOWED = {
    "streams": {"streams"},
    "corpus": {"streams", "corpus"},
    "model": {"streams", "corpus", "model"},
    "experiments": {"streams", "experiments"},
    "pipeline": {"streams", "corpus", "pipeline"},
    "evaluation": {"streams", "corpus", "model", "experiments", "pipeline", "evaluation"},
    "streamrec": set(PACKAGES),
}
#: The bottom layer: importable by everything, importing (almost) nothing.
BOTTOM = {"streams.contracts", "streams.settings"}
BOTTOM_MAY_IMPORT = BOTTOM | {"streams.sample_data"}


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str | None:
    """The longest known module that ``name`` (a dotted import) starts with."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, top_level_only: bool) -> set[str]:
    """Project modules ``module`` imports (any depth, or only what runs at import time)."""
    tree = ast.parse(MODULES[module].read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(filter(None, (_resolve(a.name) for a in node.names)))
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                base = node.module
                for alias in node.names:  # `from streams import metrics` imports a module
                    target = _resolve(f"{base}.{alias.name}") or _resolve(base)
                    if target:
                        found.add(target)
            elif (
                isinstance(node, ast.If)
                and _is_type_checking(node)
                or top_level_only
                and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            ):
                continue
            else:
                visit([c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)])

    visit(tree.body)
    found.discard(module)
    return found


def test_every_package_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module in MODULES:
        package = module.split(".")[0]
        for target in _imports(module, top_level_only=False):
            if target.split(".")[0] not in ALLOWED[package]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_contracts_and_settings_are_the_bottom_layer() -> None:
    for module in BOTTOM:
        extra = _imports(module, top_level_only=False) - BOTTOM_MAY_IMPORT
        assert not extra, f"{module} imports {sorted(extra)}"


def test_nothing_imports_the_command_line() -> None:
    importers = [
        m
        for m in MODULES
        if m != "streamrec.__main__" and "streamrec.cli" in _imports(m, top_level_only=False)
    ]
    assert not importers


def test_no_import_cycle() -> None:
    """No cycle among the imports a module runs when it is imported."""
    graph = {m: _imports(m, top_level_only=True) for m in MODULES}
    # Tarjan's strongly connected components (the graph is a few hundred nodes).
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            # a package's __init__ importing its own submodules is not a cycle to fix
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_stream_side_and_the_cli_load_without_torch() -> None:
    """The dataflow's image has no torch: importing every stream-side module (and
    the command line, which imports the model side only inside its commands)
    must not pull in torch or transformers."""
    stream_side = [
        m
        for m in MODULES
        if m.split(".")[0] in {"streams", "corpus", "experiments", "pipeline"}
        and not m.endswith("__main__")
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {[*stream_side, 'streamrec.cli']!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted({'torch', 'transformers'} & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", f"the stream side imports {out.stdout.strip()}"

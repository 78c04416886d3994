"""The import graph of src/vlmppo: no cycle between modules, no import from a lower layer to a higher one.

Every import counts, also those inside functions (the lazy imports that keep ``vlmppo --help`` fast) and under
``TYPE_CHECKING``: a lazy upward import is still a dependency. The layers, lowest first, are listed once here
and described in docs/architecture.md; a module in no layer fails the test until it is placed in one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# Lowest first. A module belongs to the layer of the longest prefix that names it or a package above it (the
# top package's name, "vlmppo", names its __init__ only); a module may import its own layer and the layers
# below, never one above.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("vlmppo", "vlmppo.errors", "vlmppo.registry", "vlmppo.io", "vlmppo.sysinfo", "vlmppo.signals",
              "vlmppo.integrity")),
    ("config", ("vlmppo.config",)),
    ("envs and models", ("vlmppo.envs", "vlmppo.models")),
    ("runtime", ("vlmppo.accel", "vlmppo.checkpoints", "vlmppo.locks", "vlmppo.train_state", "vlmppo.tracking")),
    ("data and training", ("vlmppo.data", "vlmppo.rl", "vlmppo.sft")),
    ("evaluation and measurement", ("vlmppo.eval", "vlmppo.benchmark", "vlmppo.memory", "vlmppo.planner")),
    ("orchestration", ("vlmppo.pipeline", "vlmppo.slurm", "vlmppo.export")),
    ("commands", ("vlmppo.commands", "vlmppo.cli", "vlmppo.__main__", "vlmppo.console", "vlmppo.quiet")),
]  # fmt: skip


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of ``package`` under ``src``."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``name`` imports anywhere in its file (``from p import m`` counts as
    module ``p.m`` when that is a module, else as ``p``)."""

    def known(dotted: str) -> str | None:
        while dotted and dotted not in modules:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package upwards
                package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(t for t in map(known, targets) if t is not None and t != name)
    return found


def import_graph(src: Path, package: str) -> dict[str, set[str]]:
    modules = module_files(src, package)
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, best_len = None, -1
    for rank, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            # The top package's own name ("vlmppo") stands for its __init__ only, not for everything in it.
            inside = "." in prefix and module.startswith(prefix + ".")
            if (module == prefix or inside) and len(prefix) > best_len:
                best, best_len = rank, len(prefix)
    return best


def upward_imports(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """``a -> b`` for each import of a higher layer's module ``b`` by a lower layer's module ``a``."""
    found = []
    for a, targets in sorted(graph.items()):
        for b in sorted(targets):
            la, lb = layer_of(a, layers), layer_of(b, layers)
            if la is not None and lb is not None and la < lb:
                found.append(f"{a} ({layers[la][0]}) -> {b} ({layers[lb][0]})")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph(SRC, "vlmppo")


def test_every_module_is_in_a_layer(graph):
    assert [m for m in sorted(graph) if layer_of(m) is None] == []


def test_no_module_imports_a_higher_layer(graph):
    assert upward_imports(graph) == []


def test_no_import_cycle_between_modules(graph):
    assert cycles(graph) == []


def external_imports(path: Path) -> set[str]:
    """The top-level names of the non-relative modules a file imports anywhere (``rich``, ``torch``...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_only_the_command_layer_imports_typer_or_rich():
    """The engine returns results and rows; drawing them (Rich tables, Typer options) is the commands' job."""
    commands = len(LAYERS) - 1
    drawing = [
        f"{name} imports {', '.join(sorted(ui))}"
        for name, path in module_files(SRC, "vlmppo").items()
        if layer_of(name) != commands and (ui := external_imports(path) & {"rich", "typer"})
    ]
    assert drawing == []


def test_the_checks_find_an_upward_import_and_a_cycle(tmp_path):
    """The checks themselves can fail: a config module that imports a model, and two modules that import each
    other (one of them lazily, inside a function), in a throwaway package."""
    files = {
        "pkg/__init__.py": "",
        "pkg/config/__init__.py": "",
        "pkg/config/plan.py": "def f():\n    from pkg.models.memory import estimate\n",
        "pkg/models/__init__.py": "",
        "pkg/models/memory.py": "from ..config import plan\n",
        "pkg/eval/report.py": "from pkg.eval.runner import BASELINES\n",
        "pkg/eval/runner.py": "def g():\n    from pkg.eval import report\n",
        "pkg/eval/__init__.py": "",
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text)
    layers = [("config", ("pkg.config",)), ("models", ("pkg.models",)), ("engines", ("pkg", "pkg.eval"))]
    small = import_graph(tmp_path, "pkg")
    assert upward_imports(small, layers) == ["pkg.config.plan (config) -> pkg.models.memory (models)"]
    assert sorted(cycles(small)) == [
        ["pkg.config.plan", "pkg.models.memory"],
        ["pkg.eval.report", "pkg.eval.runner"],
    ]

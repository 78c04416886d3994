"""Small parts: no function in src/ over 80 lines, no module over 500.

A function's length is its body: the signature (a command's table of options, however long) and the docstring
do not count; nested functions count toward the function that holds them.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def function_lengths(source: str) -> dict[str, int]:
    """``name`` (``Class.method`` and ``outer.inner`` for nested ones) -> body lines without the docstring."""
    lengths: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                body = child.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                    body = body[1:]  # the docstring
                name = prefix + child.name
                lengths[name] = child.end_lineno - body[0].lineno + 1 if body else 0
                visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return lengths


def test_no_function_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        module = path.relative_to(SRC).as_posix()
        for name, lines in function_lengths(path.read_text(encoding="utf-8")).items():
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{module}::{name} ({lines} lines)")
    assert long == []


def test_no_module_over_500_lines():
    long = [
        f"{path.relative_to(SRC).as_posix()} ({n} lines)"
        for path in sorted(SRC.rglob("*.py"))
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert long == []


def test_a_function_is_measured_by_its_body_without_signature_or_docstring():
    source = '''
def table(
    a: int = 1,
    b: int = 2,
):
    """Doc
    string."""
    x = a
    def inner():
        return b
    return x + inner()


class Thing:
    def method(self):
        return 1
'''
    assert function_lengths(source) == {"table": 4, "table.inner": 1, "Thing.method": 1}

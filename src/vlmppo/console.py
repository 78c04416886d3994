"""The one Rich console. Rich drops colour and live widgets by itself when stdout is not a terminal
(CI, SLURM logs, a pipe), so the same code prints plain lines there.

Off a terminal nothing is wrapped or cropped: Rich would otherwise fold tables and long lines at 80
columns (or ``$COLUMNS``), so that ``vlmppo presets list | grep NAME`` missed names split over two lines.
There every line is printed whole, at the width its content needs.
"""

from __future__ import annotations

from rich.console import Console

# Off a terminal: wide enough for any table row or path; nothing here expands to the full width
# (rules go through `heading`), so no line is padded to it.
UNWRAPPED_WIDTH = 100_000


def _make(stderr: bool = False) -> Console:
    # emoji=False: ":name:" in a path or a YAML value is text, not an emoji code.
    probe = Console(stderr=stderr, highlight=False, emoji=False)
    if probe.is_terminal or probe.is_jupyter:
        return probe
    return Console(stderr=stderr, highlight=False, emoji=False, width=UNWRAPPED_WIDTH, soft_wrap=True)


console = _make()
err_console = _make(stderr=True)


def heading(title: str) -> None:
    """A section title: a Rich rule on a terminal, one plain ``== title`` line elsewhere."""
    if console.is_terminal:
        from rich.rule import Rule

        console.print(Rule(title, align="left"))
    else:
        console.print(f"== {title}", markup=False)


def print_code(text: str, lexer: str, *, soft_wrap: bool = False) -> None:
    """YAML, shell or JSON for the user to read or copy: highlighted on a terminal, and there wrapped at
    its width (or, with ``soft_wrap``, left to the terminal to fold, so long lines copy whole), never
    cropped; the exact text elsewhere."""
    if console.is_terminal:
        from rich.syntax import Syntax

        syntax = Syntax(text, lexer, background_color="default", word_wrap=not soft_wrap)
        console.print(syntax, soft_wrap=soft_wrap)
    else:
        console.print(text.rstrip("\n"), markup=False, highlight=False)

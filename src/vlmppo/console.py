"""The one Rich console. Rich drops colour and live widgets by itself when stdout is not a terminal
(CI, SLURM logs), so the same code prints plain lines there."""

from __future__ import annotations

from rich.console import Console

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

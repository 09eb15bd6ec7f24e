"""Where the command line writes: results on stdout, errors on stderr in one red line."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print `message` as an error and return the Exit to raise. Messages quote config values: `[...]` is not
    markup."""
    err.print(f"[red]Error:[/red] {escape(message)}")
    return typer.Exit(code)

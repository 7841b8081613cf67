"""What the `cadenza music` commands share: the stderr console, failing with a message, JSON reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `error: message` on stderr and exit with `code` (1: the work failed; 2: bad usage)."""
    err.print(f"[red]error[/red] {message}", highlight=False)
    raise typer.Exit(code)


def write_json(report: dict, path: Path) -> Path:
    """Write a report as indented JSON (creating its folder); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path

"""What the `cadenza` commands share: the stderr console, failing with a message, option checks, JSON reports.

Exit status: 2 when the command line is wrong (an option out of range, options that conflict, an unknown
form): typer prints the usage and the error naming the option. 1 when a well-formed command fails: an
input file missing or not MIDI, a model that does not load, nothing evaluated. Neither prints a traceback:
a command catches the errors its library call documents and hands their message to `fail`.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with status 1 (the work failed)."""
    # Escaped: a message may quote user text with [brackets]; unwrapped: it stays one greppable line.
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def write_json(report: dict, path: Path) -> Path:
    """Write a report as indented JSON (creating its folder); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1))
    return path


# ---- option callbacks: a bad value is a usage error (exit 2) naming the option ----------------------

def form_option(form: str | None) -> str | None:
    """A form of FORM_LABEL_MAP (None passes)."""
    from cadenza.staria.forms import validate_form

    try:
        return form if form is None else validate_form(form)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e


def probability_option(value: float | None) -> float | None:
    """A probability in (0, 1] (None passes)."""
    if value is not None and not 0 < value <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {value}")
    return value


def _check_writable(directory: Path) -> None:
    if directory.exists() and not directory.is_dir():
        raise typer.BadParameter(f"{directory} is a file, not a folder")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
    except OSError as e:
        raise typer.BadParameter(f"cannot write to {directory} ({e.strerror or e})") from e


def output_file_option(path: Path | None) -> Path | None:
    """A file that can be written: not a directory, in a folder that exists or can be made (None passes)."""
    if path is not None:
        if path.is_dir():
            raise typer.BadParameter(f"{path} is a directory; give a file name")
        _check_writable(path.parent)
    return path


def output_dir_option(path: Path | None) -> Path | None:
    """A directory that exists or can be made, and can be written (None passes)."""
    if path is not None:
        _check_writable(path)
    return path

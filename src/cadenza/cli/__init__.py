"""The `cadenza` command: one Typer app; each group (music, data, speech) is a sibling module with its own
`app`, registered here. Every command is a function in a module of its group, which registers it by name;
what the commands share (failing with a message, option checks) is in common.py."""

from typing import Annotated

import typer

from cadenza import __version__
from cadenza.cli import data, music, serve, speech

app = typer.Typer(
    help="cadenza: structure-aware music (Staria) and speech (Higgs Audio) generation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(music.app, name="music", help="Symbolic music (Staria): generate in a form, evaluate, tokenize, render, "
              "train, wake-sleep.")
app.add_typer(data.app, name="data", help="Build corpora: music21, MIDI folders, synthetic structured pieces, speech.")
app.add_typer(speech.app, name="speech", help="Speech: the audio tokenizer (codec) and the Higgs Audio LM: train, generate, evaluate.")
app.command("serve")(serve.serve)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"cadenza {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """cadenza: structure-aware music (Staria) and speech (Higgs Audio) generation."""

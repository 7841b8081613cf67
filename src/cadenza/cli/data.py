"""`cadenza data ...` commands: build music and speech corpora."""

import typer

from cadenza.cli.corpus_data import export, ingest, music21
from cadenza.cli.speech_data import speech
from cadenza.cli.synth_data import synth

app = typer.Typer(no_args_is_help=True)
app.command("music21")(music21)
app.command("ingest")(ingest)
app.command("synth")(synth)
app.command("export")(export)
app.command("speech")(speech)

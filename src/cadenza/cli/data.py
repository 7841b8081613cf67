"""`cadenza data ...` commands."""

import typer

app = typer.Typer(no_args_is_help=True)

from cadenza.cli.synth_data import synth  # noqa: E402

app.command("synth")(synth)

from cadenza.cli.speech_data import speech  # noqa: E402

app.command("speech")(speech)

from cadenza.cli.corpus_data import ingest, music21  # noqa: E402

app.command("music21")(music21)
app.command("ingest")(ingest)

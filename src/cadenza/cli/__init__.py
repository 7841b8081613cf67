"""The `cadenza` command: one Typer app whose groups live in sibling modules (music, data, ...)."""

import typer

from cadenza.cli import data, music, serve, speech, speech_generate  # noqa: F401  (speech_generate adds commands to speech)

app = typer.Typer(
    help="cadenza: structure-aware music (Staria) and speech (Higgs Audio) generation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
app.add_typer(music.app, name="music", help="Symbolic music: tokenize, detokenize, (later) train and generate.")
app.add_typer(data.app, name="data", help="Build corpora: music21, MIDI folders, synthetic structured pieces, speech.")
app.add_typer(speech.app, name="speech", help="Speech: the audio tokenizer (codec) and the Higgs Audio LM: train, generate, evaluate.")
app.command("serve")(serve.serve)

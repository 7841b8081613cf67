"""`cadenza music`: each command lives in a sibling module and is registered here by name."""

import typer

from cadenza.cli.music_eval_classifier import eval_classifier
from cadenza.cli.music_eval_encoder import eval_encoder
from cadenza.cli.music_evaluate import evaluate
from cadenza.cli.music_generate import generate
from cadenza.cli.music_tokens import detokenize, render, tokenize
from cadenza.cli.music_train import export, train
from cadenza.cli.music_wake_sleep import wake_sleep

app = typer.Typer(no_args_is_help=True)
app.command("generate")(generate)
app.command("evaluate")(evaluate)
app.command("eval-classifier")(eval_classifier)
app.command("eval-encoder")(eval_encoder)
app.command("tokenize")(tokenize)
app.command("detokenize")(detokenize)
app.command("render")(render)
app.command("train", context_settings={"allow_extra_args": False})(train)
app.command("export")(export)
app.command("wake-sleep")(wake_sleep)

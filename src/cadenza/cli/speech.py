"""`cadenza speech`: each command lives in a sibling module and is registered here by name.

speech_codec: the audio tokenizer (train, export, evaluate, encode/decode files); speech_lm: the Higgs Audio
LM's corpus codes, alignment, training and export; speech_generate: text to speech, voices, evaluation."""

import typer

from cadenza.cli.speech_codec import OLD_CODEC_OPTION, decode, encode, eval_codec, export_codec, train_codec
from cadenza.cli.speech_generate import evaluate, generate, voices
from cadenza.cli.speech_lm import align_corpus, encode_corpus, export, train

app = typer.Typer(no_args_is_help=True, help="Speech: the audio tokenizer (codec) and the Higgs Audio LM (train, generate).")
codec_app = typer.Typer(no_args_is_help=True, help="Encode wavs to codes (.npy) and decode codes back to 24 kHz wavs.")
app.add_typer(codec_app, name="codec")

app.command("train-codec")(train_codec)
app.command("export-codec")(export_codec)
app.command("eval-codec", context_settings=OLD_CODEC_OPTION)(eval_codec)
codec_app.command("encode", context_settings=OLD_CODEC_OPTION)(encode)
codec_app.command("decode", context_settings=OLD_CODEC_OPTION)(decode)
app.command("encode-corpus", context_settings=OLD_CODEC_OPTION)(encode_corpus)
app.command("align-corpus", context_settings=OLD_CODEC_OPTION)(align_corpus)
app.command("train")(train)
app.command("export")(export)
app.command("generate")(generate)
app.command("voices")(voices)
app.command("eval")(evaluate)

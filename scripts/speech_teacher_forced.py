"""Do the speech LM's next-frame predictions carry the words, before any sampling? Teacher-forced check.

    python scripts/speech_teacher_forced.py MODEL_DIR [--codec DIR] [--speaker piper-joe] [--split test] [--n 16]

MODEL_DIR is an exported model (`cadenza speech export`), CODEC the audio tokenizer it learned the codes of
(default: the shipped one; any decoder of the same codes will do, see `codec_fingerprint`). Each held-out utterance is run as a plain
conversation (its transcript, then its true audio, with the aligner's measured frames for a transcript
pointer), and the model's most likely codebook-0 code at every frame is decoded by the audio tokenizer.
Whisper tiny.en then transcribes, and the script reports the word error rate of:
- `codec`: the true codes (all codebooks): what the audio tokenizer itself keeps of the words;
- `codec cb0`: the true codebook 0 alone: the best any codebook-0 prediction can do;
- `predicted cb0`: the model's argmax codebook 0 alone;
- `predicted cb0 + true rest`: the model's codebook 0 with the true residual codebooks.
and the fraction of frames whose codebook 0 the model gets right. If `predicted cb0` is far above
`codec cb0`, the model does not yet know what to say at each frame, however well it is sampled (session 7:
the small LM's attempt 3b at step 2,000 scored 103% against 22%, with 20% of frames right).
A speaker with no utterances in the split (the corpus keeps all of piper-joe in train) says the split's
sentences here, in its corpus voice; they are encoded and aligned in a temporary corpus (a v3 codec aligns
with its own phoneme head).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from cadenza.core.audio import resample
from cadenza.higgs_audio.codec.api import load_audio_tokenizer
from cadenza.higgs_audio.collator import HiggsAudioSampleCollator
from cadenza.higgs_audio.configuration import TOKENIZER_FILE
from cadenza.higgs_audio.aligner import align_corpus
from cadenza.higgs_audio.corpus_voices import SAMPLE_RATE, default_voices, synthesize
from cadenza.higgs_audio.dataset import SampleMix, SpeechLMDataset, encode_corpus
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.modeling import HiggsAudioModel
from cadenza.higgs_audio.prompt import tokenize_sample
from cadenza.higgs_audio.speech_metrics import Transcriber, edit_distance, normalize_words
from cadenza.higgs_audio.text import TextTokenizer

LABEL_KEYS = ("text_labels", "audio_labels", "alignment_labels", "pointer_labels")


@torch.no_grad()
def predicted_codebook0(model: HiggsAudioModel, batch: dict[str, torch.Tensor]) -> np.ndarray:
    """The model's most likely codebook-0 code for every frame of a one-sample batch's trained audio."""
    out = model(**{k: v for k, v in batch.items() if k not in LABEL_KEYS})
    labels = batch["audio_labels"][0, 0]
    frames = ((labels >= 0) & (labels < model.config.audio_codebook_size)).nonzero().squeeze(1)
    logits = model.audio_logits(out.hidden_states[0, frames])[:, 0, : model.config.audio_codebook_size]
    return logits.argmax(-1).numpy()


def held_out_corpus(rows: list[dict], speaker: str, n: int, tokenizer: TextTokenizer, codec: str | None) -> Path:
    """A temporary corpus of `speaker`'s corpus voice saying the first n sentences of `rows`, encoded and aligned."""
    import soundfile as sf

    voices = {v.id: v for v in default_voices()}
    if speaker not in voices:
        raise SystemExit(f"{speaker}: no utterances in this split, and not a corpus voice that can say them")
    out = Path(tempfile.mkdtemp(prefix="teacher_forced_"))
    made = []
    for k, text in enumerate(list(dict.fromkeys(r["text"] for r in rows))[:n]):
        wav = synthesize(voices[speaker], text)
        sf.write(out / f"{k}.wav", wav, SAMPLE_RATE)
        made.append({"id": f"{speaker}_{k}", "audio": f"{k}.wav", "text": text, "speaker": speaker,
                     "duration": len(wav) / SAMPLE_RATE, "sample_rate": SAMPLE_RATE, "split": rows[0]["split"]})
    (out / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in made))
    encode_corpus(out, codec, progress=False)
    align_corpus(out, tokenizer, codec)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("--corpus", type=Path, default=Path("data/speech"))
    parser.add_argument("--codec", default=None, help="audio tokenizer directory (default: the shipped one)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--speaker", default="piper-joe")
    parser.add_argument("--n", type=int, default=16, help="utterances")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = HiggsAudioModel.from_pretrained(args.model_dir).float().eval()
    tokenizer = TextTokenizer.load(f"{args.model_dir}/{TOKENIZER_FILE}")
    corpus = args.corpus
    rows = [r for r in read_manifest(corpus) if r["split"] == args.split]
    if not any(r["speaker"] == args.speaker for r in rows):
        corpus = held_out_corpus(rows, args.speaker, args.n, tokenizer, args.codec)
    data = SpeechLMDataset(corpus, tokenizer, split=args.split, codec_dir=args.codec,
                           mix=SampleMix(clone=0, plain=1, dialogue=0), speakers=[args.speaker])
    collator, codec, transcribe = HiggsAudioSampleCollator(model.config), load_audio_tokenizer(args.codec), Transcriber()
    errors: dict[str, int] = {"codec": 0, "codec cb0": 0, "predicted cb0": 0, "predicted cb0 + true rest": 0}
    words = right = frames = 0
    for row in random.Random(1).sample(data.rows, min(args.n, len(data.rows))):
        conversation, codes = data.conversation(row, random.Random(0))  # plain: no reference
        batch = collator([tokenize_sample(conversation, tokenizer, codes, data.frames.get(row["id"]))])
        true = codes[-1]
        predicted = predicted_codebook0(model, batch)
        mixed = true.copy()
        mixed[0] = predicted
        reference = normalize_words(row["text"])
        words, right, frames = words + len(reference), right + int((predicted == true[0]).sum()), frames + len(predicted)
        for name, decoded in (("codec", true), ("codec cb0", true[:1]), ("predicted cb0", predicted[None]),
                              ("predicted cb0 + true rest", mixed)):
            heard = transcribe(resample(codec.decode(decoded), codec.sampling_rate, 16000))
            errors[name] += edit_distance(reference, normalize_words(heard))
    print(f"{args.speaker} {args.split}: {args.n} utterances, {words} words; codebook 0 right on {right / frames:.1%} of frames")
    for name, count in errors.items():
        print(f"  WER {name:<26} {count / words:7.1%}")


if __name__ == "__main__":
    main()

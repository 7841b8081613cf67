"""Does the speech LM read its transcript? Per-codebook audio cross-entropy of plain conversations (transcript,
then its audio) with the right transcript and with another utterance's, from a training checkpoint.

    python scripts/speech_text_gain.py RUN_DIR/checkpoints/last.ckpt [--split val] [--speaker piper-joe] [--n 48]

A model that speaks the words scores far lower with the right transcript; one that only continues the audio
scores the same with both (attempt 1 of the small LM at step 2,400: codebook 0 3.91 vs 3.95). The corpus and
tokenizer are the run's (`data.corpus` default data/speech; the tokenizer beside the checkpoints).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from cadenza.higgs_audio.collator import HiggsAudioSampleCollator
from cadenza.higgs_audio.configuration import TOKENIZER_FILE
from cadenza.higgs_audio.dataset import SampleMix, SpeechLMDataset
from cadenza.higgs_audio.prompt import tokenize_sample
from cadenza.higgs_audio.text import TextTokenizer
from cadenza.higgs_audio.train import SpeechLMModule


@torch.no_grad()
def codebook_losses(model, collator, samples) -> torch.Tensor:
    """Mean cross-entropy [n_q] of the trained audio of `samples`."""
    batch = collator(samples)
    out = model(**{k: v for k, v in batch.items() if k not in ("text_labels", "alignment_labels", "pointer_labels")})
    return out.audio_codebook_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--corpus", default="data/speech")
    parser.add_argument("--split", default="val")
    parser.add_argument("--speaker", default=None, help="only this speaker's utterances")
    parser.add_argument("--n", type=int, default=48, help="utterances (in batches of 8)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = SpeechLMModule.load_from_checkpoint(str(args.checkpoint), map_location="cpu", weights_only=False).model.eval()
    tokenizer = TextTokenizer.load(args.checkpoint.parent.parent / TOKENIZER_FILE)
    data = SpeechLMDataset(args.corpus, tokenizer, split=args.split, mix=SampleMix(clone=0, plain=1, dialogue=0),
                           speakers=[args.speaker] if args.speaker else None)
    collator = HiggsAudioSampleCollator(model.config)
    rows = random.Random(0).sample(data.rows, min(args.n, len(data.rows)))

    def sample(row: dict, text: str, frames: list[float] | None = None):
        conversation, codes = data.conversation(dict(row, text=text), random.Random(0))  # plain: no reference
        return tokenize_sample(conversation, tokenizer, codes, frames)

    # A model with a transcript pointer reads the right transcript where the aligner heard each token, and
    # another one spread over the audio by rough durations.
    right, other = [], []
    for start in range(0, len(rows), 8):
        group = rows[start : start + 8]
        neighbours = group[1:] + group[:1]  # each utterance's audio with its neighbour's transcript
        right.append(codebook_losses(model, collator, [sample(r, r["text"], data.frames.get(r["id"])) for r in group]))
        other.append(codebook_losses(model, collator, [sample(r, n["text"]) for r, n in zip(group, neighbours)]))
    for name, losses in (("right transcript", right), ("other transcript", other)):
        mean = torch.stack(losses).mean(0)
        print(f"{name:<17} codebooks {' '.join(f'{x:.3f}' for x in mean.tolist())}  mean {mean.mean():.3f}")


if __name__ == "__main__":
    main()

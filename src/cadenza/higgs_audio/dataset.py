"""Training samples for the audio LM: a speech corpus turned into ChatML conversations over audio codes.

The corpus (`cadenza data speech`) is encoded once with the audio tokenizer into a code cache
(`CORPUS/codes/<codec fingerprint>/<utterance id>.npy`, int16 `(8, T)`), so training never runs the codec.
Each target utterance becomes one of three conversations, drawn per epoch:

- **clone** - a reference clip of the same speaker with its transcript, then the target transcript; the
  reference sits either as a user/assistant pair or as audio in the system message (the original broke
  the latter, its issue #136, so both are trained);
- **plain** - the transcript only: the model picks a voice (the "smart voice" of the original);
- **dialogue** - two speakers' utterances joined as `[SPEAKER0] ... [SPEAKER1] ...`, with a reference per
  speaker in the system message, so multi-speaker prompts are in distribution.

Only the final assistant turn (the target audio) is labelled.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset
from tqdm import tqdm

from cadenza.higgs_audio.chatml import AudioContent, ChatMLSample, Message
from cadenza.higgs_audio.codec.api import codec_fingerprint
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.prompt import ChatMLDatasetSample, expanded_length, system_message, tokenize_sample
from cadenza.higgs_audio.text import TextTokenizer

log = logging.getLogger(__name__)

FRAMES_FILE = "frames.jsonl"  # beside the codes: where each transcript token is spoken (aligner.align_corpus)
SILENCE_SECONDS = 0.2  # pause between the turns of a stitched dialogue


# ----------------------------------------------------------------------------- code cache


def corpus_tokenizer(corpus_dir: str | Path) -> TextTokenizer:
    """A text tokenizer over the corpus's training transcripts (phonemized)."""
    return TextTokenizer.build(sorted({row["text"] for row in read_manifest(corpus_dir) if row["split"] == "train"}))


def read_frames(cache: Path) -> dict[str, list[float]]:
    """Token frames per utterance id of a code cache ({} when the corpus is not aligned)."""
    path = cache / FRAMES_FILE
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return {row["id"]: row["frames"] for row in map(json.loads, f)}


def encode_corpus(corpus_dir: str | Path, codec_dir: str | Path | None = None, progress: bool = True) -> Path:
    """Encode every utterance of a corpus with the audio tokenizer (incremental); returns the cache directory.

    A file that cannot be read is reported and skipped (listed in `failures.jsonl` of the cache).
    """
    from cadenza.core.audio import AudioError
    from cadenza.higgs_audio.codec.api import load_audio_tokenizer

    corpus_dir = Path(corpus_dir)
    rows = read_manifest(corpus_dir)
    cache = corpus_dir / "codes" / codec_fingerprint(codec_dir)
    cache.mkdir(parents=True, exist_ok=True)
    tokenizer = load_audio_tokenizer(codec_dir)
    silence = tokenizer.encode(np.zeros(int(SILENCE_SECONDS * tokenizer.sampling_rate), np.float32))
    np.save(cache / "_silence.npy", silence.numpy().astype(np.int16))
    failures = []
    todo = [r for r in rows if not (cache / f"{r['id']}.npy").exists()]
    for row in tqdm(todo, desc=f"encoding {corpus_dir.name}", disable=not progress):
        try:
            codes = tokenizer.encode(corpus_dir / row["audio"])
        except AudioError as exc:
            log.warning("skipped %s: %s", row["audio"], exc)
            failures.append({"id": row["id"], "audio": row["audio"], "error": str(exc)})
            continue
        tmp = cache / f"{row['id']}.tmp.npy"
        np.save(tmp, codes.numpy().astype(np.int16))
        tmp.replace(cache / f"{row['id']}.npy")
    (cache / "failures.jsonl").write_text("".join(json.dumps(f) + "\n" for f in failures))
    return cache


# ----------------------------------------------------------------------------- samples


@dataclass
class SampleMix:
    """How often each kind of conversation is drawn (normalized), and the reference/target limits."""

    clone: float = 0.6
    plain: float = 0.3
    dialogue: float = 0.1
    system_reference: float = 0.5  # share of clone samples with the reference in the system message
    max_target_seconds: float = 10.0
    max_reference_seconds: float = 6.0


def length_grouped_order(samples: list[ChatMLDatasetSample], group: int, seed: int, window: int = 50) -> list[int]:
    """A shuffled order whose consecutive runs of `group` items have similar lengths: shuffle, sort each
    window of `group * window` items by length, cut into runs, shuffle the runs. Batches cut from it
    carry far less padding (random batches of this corpus were 66% real positions; grouped, 98%)."""
    rng = random.Random(seed)
    order = list(range(len(samples)))
    rng.shuffle(order)
    lengths = [expanded_length(s) for s in samples]
    runs = []
    for start in range(0, len(order), group * window):
        chunk = sorted(order[start : start + group * window], key=lambda i: lengths[i])
        runs += [chunk[k : k + group] for k in range(0, len(chunk), group)]
    rng.shuffle(runs)
    return [i for run in runs for i in run]


class SpeechLMDataset(Dataset):
    """Conversations over a split of an encoded speech corpus; item i's kind and partners depend on (seed, epoch, i)."""

    def __init__(self, corpus_dir: str | Path, tokenizer: TextTokenizer, split: str = "train",
                 codec_dir: str | Path | None = None, mix: SampleMix | None = None, seed: int = 0,
                 speakers: list[str] | None = None, group_by_length: int | None = None):
        self.tokenizer = tokenizer
        # Items in an order where each run of `group_by_length` has similar lengths (see length_grouped_order).
        self.group_by_length, self.order = group_by_length, None
        self.mix = mix or SampleMix()
        self.seed, self.epoch = seed, 0
        corpus_dir = Path(corpus_dir)
        cache = corpus_dir / "codes" / codec_fingerprint(codec_dir)
        if not cache.is_dir():
            raise FileNotFoundError(f"{corpus_dir}: no code cache for this codec; run `cadenza speech encode-corpus {corpus_dir}`")
        rows = [r for r in read_manifest(corpus_dir) if r["split"] == split and (speakers is None or r["speaker"] in speakers)]
        self.codes: dict[str, np.ndarray] = {}
        for row in rows:
            path = cache / f"{row['id']}.npy"
            if path.exists():
                self.codes[row["id"]] = np.load(path)
        self.silence = np.load(cache / "_silence.npy")
        self.frames = read_frames(cache)  # {} when the corpus is not aligned: rough guesses instead
        self.rows = [r for r in rows if r["id"] in self.codes and r["duration"] <= self.mix.max_target_seconds]
        if not self.rows:
            raise ValueError(f"{corpus_dir}: no encoded utterances in split {split!r}")
        self.by_speaker: dict[str, list[dict]] = defaultdict(list)
        for row in self.rows:
            if row["duration"] <= self.mix.max_reference_seconds:
                self.by_speaker[row["speaker"]].append(row)

    def set_epoch(self, epoch: int) -> None:
        """Draw new conversation kinds and partners (called by the data module every epoch, before any item)."""
        self.epoch = epoch
        if self.group_by_length:
            self.order = length_grouped_order([self.item(i) for i in range(len(self))], self.group_by_length,
                                              seed=hash((self.seed, epoch)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> ChatMLDatasetSample:
        return self.item(self.order[index] if self.order is not None else index)

    def item(self, index: int) -> ChatMLDatasetSample:
        """The conversation of row `index` this epoch (its kind and partners depend on (seed, epoch, index))."""
        rng = random.Random(hash((self.seed, self.epoch, index)))
        row = self.rows[index]
        sample, codes = self.conversation(row, rng)
        return tokenize_sample(sample, self.tokenizer, codes, self.frames.get(row["id"]))

    def conversation(self, target: dict, rng: random.Random) -> tuple[ChatMLSample, list[np.ndarray]]:
        """A ChatML conversation ending in `target`'s audio, and the codes of its audio contents in order."""
        mix = self.mix
        kind = rng.choices(["clone", "plain", "dialogue"], [mix.clone, mix.plain, mix.dialogue])[0]
        reference = self._reference(target, rng)
        if kind == "dialogue":
            other = self.rows[rng.randrange(len(self.rows))]
            other_ref = self._reference(other, rng)
            fits = target["duration"] + other["duration"] <= mix.max_target_seconds
            if other["speaker"] != target["speaker"] and reference and other_ref and fits:
                return self._dialogue([target, other], [reference, other_ref])
        if kind == "plain" or reference is None:
            return self._single(target, None, in_system=False)
        return self._single(target, reference, in_system=rng.random() < mix.system_reference)

    def _reference(self, target: dict, rng: random.Random) -> dict | None:
        choices = [r for r in self.by_speaker.get(target["speaker"], []) if r["id"] != target["id"]]
        return rng.choice(choices) if choices else None

    def _audio(self, row: dict) -> AudioContent:
        return AudioContent(audio_url=row["audio"], duration=row["duration"])

    def _single(self, target: dict, reference: dict | None, in_system: bool) -> tuple[ChatMLSample, list[np.ndarray]]:
        if reference is None:
            messages = [system_message()]
            codes = []
        elif in_system:
            messages = [system_message(references={0: self._audio(reference)})]
            codes = [self.codes[reference["id"]]]
        else:
            messages = [system_message(), Message("user", reference["text"]),
                        Message("assistant", self._audio(reference))]
            codes = [self.codes[reference["id"]]]
        messages += [Message("user", target["text"]), Message("assistant", self._audio(target))]
        codes.append(self.codes[target["id"]])
        return ChatMLSample(messages, start_index=len(messages) - 1, speaker=target["speaker"]), codes

    def _dialogue(self, turns: list[dict], references: list[dict]) -> tuple[ChatMLSample, list[np.ndarray]]:
        codes = [self.codes[ref["id"]] for ref in references]
        transcript = " ".join(f"[SPEAKER{n}] {turn['text']}" for n, turn in enumerate(turns))
        joined = [self.codes[turns[0]["id"]]]
        for turn in turns[1:]:
            joined += [self.silence, self.codes[turn["id"]]]
        codes.append(np.concatenate(joined, axis=1))
        messages = [system_message(references={n: self._audio(r) for n, r in enumerate(references)}), Message("user", transcript),
                    Message("assistant", AudioContent(audio_url="dialogue"))]
        return ChatMLSample(messages, start_index=2, speaker=turns[0]["speaker"]), codes

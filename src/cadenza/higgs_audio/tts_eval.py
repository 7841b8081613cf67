"""How well the speech LM speaks, on sentences and voices it never trained on.

Groups (all sentences from the corpus' test split, never trained on; or from its val split, to choose settings
such as the guidance weight without tuning on the test sentences):
- `joe`: the shipped `joe` voice preset says held-out sentences; word error rate of Whisper tiny.en;
- `unseen_speaker`: voices held out of training entirely (the corpus' test-only (or val-only) speakers), cloned from one
  reference clip + transcript; WER, and resemblyzer similarity of the generated speech to the reference;
- `festival`: Festival voices no model here ever trains on, synthesized at evaluation time, cloned the same way.
  Two of them record speakers the corpus also has through flite (kal_diphone ~ flite kal16, the same diphone
  recordings; cmu_us_slt_arctic_hts ~ flite slt, the same ARCTIC speaker by another synthesis method): only
  ked_diphone is a speaker never heard in any form, so the report also lists every voice on its own.
For context each clone group also reports the WER of the reference engine's own speech of the sentences, and
of that speech after a round trip through the audio tokenizer (`codec WER`): the best any model speaking
through these codes could score. Every clip also gets DNSMOS P.835 overall quality (1-5, no reference needed),
and so does the reference engine's own speech where the corpus has it.
Generation runs batched; the real-time factor is wall time over seconds of audio produced.
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cadenza.core.audio import read_audio, resample
from cadenza.higgs_audio.engine import GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.speak import Reference, SpeechRequest, file_reference, speak_batch
from cadenza.higgs_audio.speech_metrics import (SpeakerEncoder, Transcriber, dnsmos, edit_distance, festival_clips,
                                                normalize_words)


EVAL_SPLITS = ("test", "val")  # the corpus splits nothing trains on


@dataclass
class Case:
    """One sentence to say in one voice."""

    group: str
    voice: str
    text: str
    reference_audio: str
    reference_text: str
    engine_audio: str | None = None  # the voice's own engine saying `text`, when the corpus has it


@dataclass
class CaseResult:
    group: str
    voice: str
    text: str
    hypothesis: str
    words: int
    errors: int
    engine_errors: int | None
    codec_errors: int | None  # the engine's speech after an audio tokenizer round trip
    similarity: float
    seconds: float
    dnsmos: float
    engine_dnsmos: float | None  # the engine's own speech of `text`


def build_cases(corpus_dir: str | Path, joe: int = 30, per_voice: int = 4, festival: bool = True,
                work_dir: str | Path = "runs/eval_tts", seed: int = 0, split: str = "test") -> list[Case]:
    """Held-out sentences (of the corpus' `split`: test or val) for the joe preset, the speakers heard only in
    that split, and Festival voices."""
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {', '.join(EVAL_SPLITS)}, not {split!r}")
    from cadenza.higgs_audio.speak import voices

    corpus_dir = Path(corpus_dir)
    rows = read_manifest(corpus_dir)
    rng = random.Random(seed)
    train_speakers = {r["speaker"] for r in rows if r["split"] == "train"}
    held_out = [r for r in rows if r["split"] == split]
    joe_preset = voices().get("joe")
    cases = []
    if joe_preset is not None and joe:
        ref_text = joe_preset.with_suffix(".txt").read_text().strip()
        cases += [Case("joe", "joe", text, str(joe_preset), ref_text, audio)
                  for text, audio in _joe_sentences(corpus_dir, held_out, joe, Path(work_dir) / "joe", rng)]
    by_speaker = defaultdict(list)
    for r in held_out:
        if r["speaker"] not in train_speakers:
            by_speaker[r["speaker"]].append(r)
    for speaker, utterances in sorted(by_speaker.items()):
        utterances = sorted(utterances, key=lambda r: r["id"])
        rng.shuffle(utterances)
        refs = [r for r in utterances if 2.0 <= r["duration"] <= 6.0]
        if not refs:
            continue
        ref = refs[0]
        for r in [u for u in utterances if u is not ref][:per_voice]:
            cases.append(Case("unseen_speaker", speaker, r["text"], str(corpus_dir / ref["audio"]), ref["text"],
                              str(corpus_dir / r["audio"])))
    if festival:
        sentences = sorted({r["text"] for r in held_out if 5 <= len(r["text"].split()) <= 16})
        rng.shuffle(sentences)
        clips = festival_clips(sentences[: per_voice + 1], Path(work_dir) / "festival", per_voice + 1)
        by_voice = defaultdict(list)
        for clip in clips:
            by_voice[clip.speaker].append(clip)
        for voice, voice_clips in by_voice.items():
            ref, targets = voice_clips[0], voice_clips[1:]
            cases += [Case("festival", voice, c.text, ref.audio, ref.text, c.audio) for c in targets]
    return cases


def _joe_sentences(corpus_dir: Path, held_out: list[dict], n: int, work_dir: Path,
                   rng: random.Random) -> list[tuple[str, str | None]]:
    """n held-out sentences for joe and Piper joe's own speech of each (None without Piper): the held-out
    utterances of piper-joe, or, where the corpus keeps joe in train only (voices are split by speaker),
    held-out sentences of other voices, which joe's Piper voice then says here (kept in work_dir)."""
    joe_rows = [r for r in held_out if r["speaker"] == "piper-joe"]
    if joe_rows:
        rng.shuffle(joe_rows)
        return [(r["text"], str(corpus_dir / r["audio"])) for r in joe_rows[:n]]
    from cadenza.higgs_audio.corpus import sentence_hash
    from cadenza.higgs_audio.corpus_voices import JOE, SAMPLE_RATE, engine_available, synthesize

    sentences = sorted({r["text"] for r in held_out if 5 <= len(r["text"].split()) <= 16})
    rng.shuffle(sentences)
    if not engine_available("piper"):
        return [(text, None) for text in sentences[:n]]
    import soundfile as sf

    work_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for text in sentences[:n]:
        path = work_dir / f"piper-joe_{sentence_hash(text)}.wav"
        if not path.exists():
            sf.write(path, synthesize(JOE, text), SAMPLE_RATE)
        out.append((text, str(path)))
    return out


def evaluate_tts(engine: HiggsAudioServeEngine, cases: list[Case], batch_size: int = 8, seed: int = 0,
                 temperature: float = 0.7, phoneme_guidance: float | None = None, best_of: int = 1,
                 progress: bool = True) -> dict:
    """Generate every case (batched; `best_of` takes each, see takes.py), then measure WER and speaker
    similarity; per-group aggregates + rows. phoneme_guidance None: GenerationSettings' default."""
    from tqdm import tqdm

    references: dict[tuple[str, str], Reference] = {}
    requests = []
    for n, case in enumerate(cases):
        key = (case.reference_audio, case.reference_text)
        if key not in references:
            references[key] = file_reference(engine, case.reference_audio, case.reference_text)
        guidance = {} if phoneme_guidance is None else {"phoneme_guidance": phoneme_guidance}
        settings = GenerationSettings(max_new_tokens=25 * 20, temperature=temperature, seed=seed + n, best_of=best_of,
                                      **guidance)
        requests.append(SpeechRequest(case.text, {0: references[key]}, settings=settings))
    audios, started = [], time.perf_counter()
    for start in tqdm(range(0, len(requests), batch_size), desc="generating", disable=not progress):
        responses = speak_batch(engine, requests[start : start + batch_size])
        audios += [r.audio if r.audio is not None else np.zeros(0, np.float32) for r in responses]
    generation_seconds = time.perf_counter() - started
    transcribe, speaker = Transcriber(), SpeakerEncoder()
    results, sr = [], engine.sampling_rate
    for case, audio in tqdm(list(zip(cases, audios)), desc="measuring", disable=not progress):
        words = normalize_words(case.text)
        generated16 = resample(audio, sr, 16000) if len(audio) else np.zeros(1600, np.float32)
        hypothesis = transcribe(generated16)
        reference16 = resample(read_audio(case.reference_audio, sr=sr)[0], sr, 16000)
        engine_errors = codec_errors = engine_quality = None
        if case.engine_audio:
            spoken = read_audio(case.engine_audio, sr=sr)[0]
            round_trip = engine.audio_tokenizer.decode(engine.audio_tokenizer.encode(spoken, sr=sr))
            spoken16, round_trip16 = (resample(a, sr, 16000) for a in (spoken, round_trip))
            engine_errors, codec_errors = (edit_distance(words, normalize_words(transcribe(a)))
                                           for a in (spoken16, round_trip16))
            engine_quality = dnsmos(spoken16)
        results.append(CaseResult(case.group, case.voice, case.text, hypothesis, len(words),
                                  edit_distance(words, normalize_words(hypothesis)), engine_errors, codec_errors,
                                  speaker.similarity(reference16, generated16) if len(audio) else 0.0, len(audio) / sr,
                                  dnsmos(generated16), engine_quality))
    audio_seconds = sum(r.seconds for r in results)
    groups, voices = defaultdict(list), defaultdict(list)
    for r in results:
        groups[r.group].append(r)
        voices[f"{r.group}/{r.voice}"].append(r)
    return {
        "groups": {name: aggregate(rows) for name, rows in groups.items()},
        "voices": {name: aggregate(rows) for name, rows in voices.items()},
        "rtf": generation_seconds / max(audio_seconds, 1e-9),
        "batch_size": batch_size,
        "best_of": best_of,
        "cases": [asdict(r) for r in results],
    }


def aggregate(rows: list[CaseResult]) -> dict:
    """Corpus-level WER (errors / words), mean similarity and DNSMOS, and the engines' own WER (as said, and
    through the audio tokenizer) and DNSMOS where known."""
    words = sum(r.words for r in rows) or 1
    known = [r for r in rows if r.engine_errors is not None]
    known_words = sum(r.words for r in known) or 1
    return {
        "n": len(rows),
        "wer": 100.0 * sum(r.errors for r in rows) / words,
        "engine_wer": 100.0 * sum(r.engine_errors for r in known) / known_words if known else None,
        "codec_wer": 100.0 * sum(r.codec_errors for r in known) / known_words if known else None,
        "similarity": float(np.mean([r.similarity for r in rows])),
        "dnsmos": float(np.mean([r.dnsmos for r in rows])),
        "engine_dnsmos": float(np.mean([r.engine_dnsmos for r in known])) if known else None,
        "mean_seconds": float(np.mean([r.seconds for r in rows])),
    }


def format_report(report: dict) -> str:
    """A small table of the groups, then of the voices of each group."""
    lines = [f"{'group':<32}{'n':>4}{'WER %':>8}{'engine WER %':>14}{'codec WER %':>13}{'similarity':>12}"
             f"{'DNSMOS':>8}{'engine DNSMOS':>15}{'mean s':>8}"]
    for name, g in [*report["groups"].items(), *report["voices"].items()]:
        engine, codec, engine_quality = (f"{g[k]:.{digits}f}" if g[k] is not None else "-"
                                         for k, digits in (("engine_wer", 1), ("codec_wer", 1), ("engine_dnsmos", 2)))
        lines.append(f"{name:<32}{g['n']:>4}{g['wer']:>8.1f}{engine:>14}{codec:>13}{g['similarity']:>12.3f}"
                     f"{g['dnsmos']:>8.2f}{engine_quality:>15}{g['mean_seconds']:>8.2f}")
    takes = f", best of {report['best_of']} takes" if report.get("best_of", 1) > 1 else ""
    lines.append(f"real-time factor (batch {report['batch_size']}{takes}): {report['rtf']:.3f}")
    return "\n".join(lines)


def write_report(report: dict, path: str | Path) -> None:
    """The report as JSON."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1))

"""Speech LM serving speed: real-time factor, time to first streamed audio, and batch throughput.

    python benchmarks/speech.py [--model DIR | --preset small] [--frames 100] [--batch 16] [--rounds 2] [--threads 2]

Every request clones the shipped `joe` voice (its reference as a user/assistant pair) and says the words of one
sentence that `--frames` can say at a reading pace (`speak.SECONDS_PER_WORD`: 10 words in the default 100).
EOS is suppressed so every run decodes exactly `--frames` audio frames (25 per second): timings then do not
depend on when a (possibly untrained) model would stop. Measured in one process, against named baselines:

- (a) real-time factor at batch 1 = wall seconds (decode steps + codec decode) / seconds of audio, target <= 0.1.
  Baseline `no_kv_cache`: the same model re-running the whole prefix every step; its step time is measured
  at 5 prefix lengths spread over the same decode and projected to all steps (a full run would take minutes).
  (a) and (b) are measured for a voice the engine has read before (its reference's KV cache kept: the
  steady state of a server or a batch file) and, as baseline `cold`, for the first request with that voice.
  Also at batch 1: the best of 4 takes (`best_of`, takes.py: four takes decoded as one batch, one decoded to
  audio) against one take, for a model that can choose among takes.
- (b) time to first streamed audio from `speak_stream` (prefill, the decode steps until the delay pattern
  and the codec's lookahead release the first frame, and that frame's decode), target <= 250 ms.
- (c) throughput at batch `--batch` in audio seconds per wall second; baseline: batch 1 in the same run;
  target >= 8x (the issue's bar). All requests clone one voice, so the engine prefills their common prompt
  prefix once and reads it once per step; named baseline `no_prefix_sharing`: the same batch with that
  switched off. Every request still pays its own codec decode (the batch's clips go through the codec in one
  call, which saves the per-call overhead, not the work) and, unshared, its prefill, so the ratio cannot exceed
  (batch-1 seconds per request) / (codec decode [+ prefill] seconds per request): printed as `ceiling`.
- (d) one decode step (forward + heads + sampling, ms) at batch 1 and `--batch`, after a prefill of the same
  prompt: ours (`HiggsAudioDecoder` with the weight dtype the engine picks for this CPU + `BatchSampler`, split
  into forward / heads / sampling; at `--batch` also without prefix sharing), ours with the other dtype
  (float16 or float32 weights), and baseline
  `previous`: the engine's former step, a `HiggsAudioModel.forward` per step with a growing attention
  mask, both heads and a per-row, per-codebook sampling loop.
- (e) a batch of `--batch` streams (`engine.stream_prompts`, every request's audio as it becomes final) against
  the same batch decoded whole, in wall seconds: a stream decodes its audio in chunks of `stream_chunk_frames`
  (5) frames, those due at one step for all rows in one codec call, each chunk re-reading the codec's lookahead
  on both sides. Baseline `one_frame_chunks`: stream_chunk_frames=1 (still one codec call per step for the
  batch; the engine's stream before chunking made one call per row and step).
- (f) named peers: Piper `joe` and hibari, the natural voices the speech corpus is built from, say the same
  words in the same rounds, loaded and called as the corpus builder does (`corpus_voices.synthesize`: 24 kHz
  out, trimmed, loudness-normalized; Piper on `--threads` threads, hibari on the one the corpus gives it).
  Their real-time factors, and ours at batch 1 over theirs; a peer that is not installed is reported as such.

Threads: on a machine whose other cores are busy (a training), use --threads 1; a second thread that has to
share a busy core makes every matrix product wait for it (measured 5-10x slower).

Default model: the shipped `src/cadenza/pretrained/higgs_audio_small`; when none is shipped (or with
`--preset small`), an untrained `HiggsAudioConfig.small` model with a tokenizer built from a few sentences
(speed does not depend on the weights). Writes benchmarks/results/speech.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cadenza.core.sampling import SamplingConfig, make_generator, repetition_aware_sample
from cadenza.higgs_audio import train as lm_train
from cadenza.higgs_audio.corpus_voices import (HEART, JOE, SAMPLE_RATE, VoiceIdentity, engine_available,
                                               set_piper_threads, synthesize)
from cadenza.higgs_audio.engine import SHIPPED_MODEL, GenerationSettings, HiggsAudioServeEngine
from cadenza.higgs_audio.fast_decoder import HiggsAudioDecoder
from cadenza.higgs_audio.inputs import expand_sample, pad_inputs
from cadenza.higgs_audio.modeling import HiggsAudioModel, KVCache
from cadenza.higgs_audio.prompt import ChatMLDatasetSample
from cadenza.higgs_audio.sampler import BatchSampler
from cadenza.higgs_audio.speak import (SpeechRequest, first_prompt, speak_batch, speak_stream, speakable_words,
                                       voice_reference)
from cadenza.higgs_audio.text import TextTokenizer

RESULTS = Path(__file__).parent / "results" / "speech.json"
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home before the rain starts."
TOKENIZER_TEXTS = [SENTENCE, "Hello there.", "How are you today, my friend?"]
TAKES = 4  # GenerationSettings.best_of of the best-of run (what `make demo` uses)
TARGETS = {"rtf": 0.1, "first_audio_ms": 250.0, "batch_speedup": 8.0}
PEERS = {"piper_joe": JOE, "hibari": HEART}  # the corpus's natural voices


def build_engine(model: Path | None, preset: str | None) -> tuple[HiggsAudioServeEngine, str]:
    """The engine of a model directory, or of an untrained preset model saved to a temporary directory."""
    if preset is None and model is None and (SHIPPED_MODEL / "config.json").is_file():
        model = SHIPPED_MODEL
    if model is not None:
        return HiggsAudioServeEngine(model), str(model)
    preset = preset or "small"
    tok = TextTokenizer.build(TOKENIZER_TEXTS)
    config = lm_train.PRESETS[preset](text_vocab_size=tok.vocab_size, **lm_train.token_ids(tok))
    torch.manual_seed(0)
    directory = Path(tempfile.mkdtemp(prefix="speech_bench_"))
    lm_train.save_model(HiggsAudioModel(config), tok, directory, step=0)
    return HiggsAudioServeEngine(directory), f"untrained HiggsAudioConfig.{preset} (no shipped model)"


def peer_runs(text: str, threads: int) -> dict[str, object]:
    """`peer_NAME` -> a call that has the peer say `text` (24 kHz audio), for the peers installed here."""
    set_piper_threads(threads)

    def say(voice: VoiceIdentity):
        return lambda: synthesize(voice, text)

    return {f"peer_{name}": say(voice) for name, voice in PEERS.items() if engine_available(voice.engine)}


def suppress_eos(engine: HiggsAudioServeEngine) -> None:
    """Codebook 0 never samples EOS: every decode runs to max_new_tokens."""
    original, eos = engine.decoder.audio_logits, engine.config.audio_stream_eos_id

    def audio_logits(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)
        logits[..., 0, eos] = float("-inf")
        return logits

    engine.decoder.audio_logits = audio_logits


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, process CPU seconds, result) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def no_cache_step_seconds(engine: HiggsAudioServeEngine, prompt: ChatMLDatasetSample, columns: list[np.ndarray],
                          points: int = 5) -> list[tuple[int, float]]:
    """Wall seconds of one decode step without a KV cache (forward over the whole prefix + both heads) at
    `points` prefix lengths spread over a decode of len(columns) steps: [(prefix length, seconds)]."""
    cfg, model = engine.config, engine.model
    prompt = ChatMLDatasetSample(prompt.input_ids + [cfg.audio_out_bos_token_id], prompt.label_ids + [-100],
                                 prompt.audio_codes)
    e = expand_sample(prompt, cfg)
    ids, codes, mask = torch.from_numpy(e.input_ids), torch.from_numpy(e.audio_codes), torch.from_numpy(e.audio_mask)
    delayed = torch.from_numpy(np.stack(columns, axis=1)).long()
    out = []
    for k in np.linspace(0, len(columns) - 1, points).astype(int):
        step_ids = torch.cat([ids, torch.full((k,), cfg.audio_out_token_id)])[None]
        step_codes = torch.cat([codes, delayed[:, :k]], dim=1)[None]
        step_mask = torch.cat([mask, torch.ones(k, dtype=torch.bool)])[None]

        def step(step_ids=step_ids, step_codes=step_codes, step_mask=step_mask) -> None:
            with torch.inference_mode():
                hidden = model(input_ids=step_ids, audio_codes=step_codes, audio_mask=step_mask).hidden_states[:, -1]
                model.text_logits(hidden), model.audio_logits(hidden)

        step()  # warm-up at this length
        out.append((int(step_ids.shape[1]), min(timed(step)[0] for _ in range(2))))
    return out


def _prefilled(engine: HiggsAudioServeEngine, prompt: ChatMLDatasetSample, batch: int, steps: int):
    """A KV cache holding `batch` copies of the prompt (as the engine prefills it), its mask, the last hidden."""
    cfg = engine.config
    prompt = ChatMLDatasetSample(prompt.input_ids + [cfg.audio_out_bos_token_id], prompt.label_ids + [-100],
                                 prompt.audio_codes)
    inputs = pad_inputs([expand_sample(prompt, cfg)] * batch, cfg, pad_left=True, round_to=1)
    attention = inputs.pop("attention_mask")
    cache = KVCache(cfg, batch, attention.shape[1] + steps + 1)
    with torch.inference_mode():
        hidden = engine.model(**{k: v for k, v in inputs.items() if "labels" not in k}, attention_mask=attention,
                              past_key_values=cache).hidden_states[:, -1]
    return cache, attention, hidden


def _no_eos(logits: torch.Tensor, eos: int) -> torch.Tensor:
    logits[..., 0, eos] = float("-inf")  # as suppress_eos: every variant decodes the same number of frames
    return logits


def previous_steps(engine: HiggsAudioServeEngine, prompt: ChatMLDatasetSample, batch: int, steps: int) -> float:
    """Seconds per step of the engine's former decode loop (before HiggsAudioDecoder and BatchSampler)."""
    cfg, model = engine.config, engine.model
    n_q, bos, eos = cfg.audio_num_codebooks, cfg.audio_stream_bos_id, cfg.audio_stream_eos_id
    cache, attention, hidden = _prefilled(engine, prompt, batch, steps)
    generators = [make_generator(i) for i in range(batch)]
    columns: list[list[torch.Tensor]] = [[torch.full((n_q,), bos)] for _ in range(batch)]
    k, sampling = torch.arange(n_q), SamplingConfig(0.7, None, 0.95)
    start = time.perf_counter()
    with torch.inference_mode():
        for step in range(1, steps + 1):
            model.text_logits(hidden)
            audio = _no_eos(model.audio_logits(hidden), eos)
            for i in range(batch):  # the former per-row _sample_column
                logits = audio[i].float().clone()
                logits[:, bos] = float("-inf")
                logits[1:, eos] = float("-inf")
                history = torch.stack(columns[i][1:], dim=1) if len(columns[i]) > 1 else torch.empty(n_q, 0, dtype=torch.long)
                picked = repetition_aware_sample(logits, history, sampling, 7, 2, generators[i])
                columns[i].append(torch.where(k >= step, torch.full_like(picked, bos), picked))
            ids = torch.full((batch, 1), cfg.audio_out_token_id)
            codes = torch.stack([c[-1] for c in columns])[:, :, None]
            attention = torch.cat([attention, torch.ones(batch, 1, dtype=attention.dtype)], dim=1)
            hidden = model(input_ids=ids, audio_codes=codes, audio_mask=torch.ones(batch, 1, dtype=torch.bool),
                           attention_mask=attention, past_key_values=cache).hidden_states[:, -1]
    return (time.perf_counter() - start) / steps


def our_steps(engine: HiggsAudioServeEngine, decoder: HiggsAudioDecoder, prompt: ChatMLDatasetSample, batch: int,
              steps: int, share: bool = True) -> dict[str, float]:
    """Seconds per step of the engine's decode loop (decoder step, audio head, batched sampling), split by part;
    share: let the engine's prefill share the prompts' common prefix (then read once per step)."""
    cfg = engine.config
    prompt = ChatMLDatasetSample(prompt.input_ids + [cfg.audio_out_bos_token_id], prompt.label_ids + [-100],
                                 prompt.audio_codes)
    saved = engine.prefill.min_shared_prefix
    engine.prefill.min_shared_prefix = saved if share else 1 << 30
    try:
        with torch.inference_mode():
            cache, attention, hidden, shared = engine.prefill([expand_sample(prompt, cfg)] * batch, steps)
    finally:
        engine.prefill.min_shared_prefix = saved
    settings = [GenerationSettings(temperature=0.7, top_p=0.95, seed=i) for i in range(batch)]
    sampler = BatchSampler(settings, [make_generator(i) for i in range(batch)], cfg.audio_num_codebooks,
                           cfg.audio_stream_bos_id, cfg.audio_stream_eos_id)
    rows, parts = list(range(batch)), {"forward": 0.0, "heads": 0.0, "sampling": 0.0}
    state = decoder.start(cache, attention, shared)
    with torch.inference_mode():
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = _no_eos(decoder.audio_logits(hidden), cfg.audio_stream_eos_id)
            t1 = time.perf_counter()
            columns, _ = sampler.audio_columns(rows, logits, every_row=True)
            t2 = time.perf_counter()
            hidden = decoder.step(state, audio_codes=columns)
            t3 = time.perf_counter()
            parts["heads"] += t1 - t0
            parts["sampling"] += t2 - t1
            parts["forward"] += t3 - t2
    out = {name: seconds / steps for name, seconds in parts.items()}
    out["total"] = sum(out.values())
    return out


def step_comparison(engine: HiggsAudioServeEngine, prompt: ChatMLDatasetSample, batches: list[int], steps: int,
                    rounds: int) -> dict:
    """Median ms per decode step, per batch size: ours (the engine's weight dtype; at batch > 1 also without
    sharing the prompt prefix), ours with the other weight dtype, and the previous loop."""
    other = torch.float16 if engine.decoder.weight_dtype == torch.float32 else torch.float32
    other_decoder = HiggsAudioDecoder(engine.model, other)
    out = {}
    for batch in batches:
        variants = {"previous": lambda b=batch: {"total": previous_steps(engine, prompt, b, steps)},
                    "ours": lambda b=batch: our_steps(engine, engine.decoder, prompt, b, steps),
                    "ours_other_weights": lambda b=batch: our_steps(engine, other_decoder, prompt, b, steps)}
        if batch > 1:
            variants["ours_no_prefix_sharing"] = lambda b=batch: our_steps(engine, engine.decoder, prompt, b, steps,
                                                                          False)
        our_steps(engine, engine.decoder, prompt, batch, 5)  # warm-up
        samples: dict[str, list] = {name: [] for name in variants}
        for _ in range(rounds):  # alternate, so changes in machine load hit every variant alike
            for name, run in variants.items():
                samples[name].append(run())
        row = {name: {part: round(1000 * statistics.median(s[part] for s in runs), 3) for part in runs[0]}
               for name, runs in samples.items()}
        row["ratio_previous_over_ours"] = round(row["previous"]["total"] / row["ours"]["total"], 2)
        out[f"batch_{batch}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="speech LM directory (default: the shipped one; an untrained preset while none is shipped)")
    parser.add_argument("--preset", choices=sorted(lm_train.PRESETS), default=None,
                        help="benchmark an untrained model of this preset instead")
    parser.add_argument("--frames", type=int, default=100, help="audio frames per request (25 = 1 s)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.model is not None and args.preset is not None:
        parser.error("give --model or --preset, not both")

    engine, source = build_engine(args.model, args.preset)
    suppress_eos(engine)
    n_q, fps = engine.config.audio_num_codebooks, engine.audio_tokenizer.tps
    steps = args.frames + n_q + 1  # the all-BOS column, the frames, and the one a cut-off stream holds back
    audio_seconds = args.frames / fps

    joe = voice_reference(engine, "joe")
    text = " ".join(SENTENCE.split()[:speakable_words(engine, GenerationSettings(max_new_tokens=steps))])

    def request(seed: int, takes: int = 1) -> SpeechRequest:
        settings = GenerationSettings(max_new_tokens=steps, temperature=0.7, seed=seed, best_of=takes)
        return SpeechRequest(text, {0: joe}, settings=settings)

    prompt = first_prompt(engine, request(0))

    def batch_of(size: int, share: bool = True, takes: int = 1):
        def run():
            saved = engine.prefill.min_shared_prefix
            engine.prefill.min_shared_prefix = saved if share else 1 << 30
            try:
                responses = speak_batch(engine, [request(i, takes) for i in range(size)])
            finally:
                engine.prefill.min_shared_prefix = saved
            assert all(r.generated_audio_tokens.shape[1] == args.frames for r in responses)
            return responses
        return run

    def first_audio() -> tuple[int, float]:
        """(decode steps until the first audio, seconds until the first delta: the prefill)."""
        start, prefill = time.perf_counter(), None
        for n, delta in enumerate(speak_stream(engine, request(0)), 1):
            prefill = prefill if prefill is not None else time.perf_counter() - start
            if delta.audio is not None and len(delta.audio):
                return n, prefill
        raise RuntimeError("the stream produced no audio")

    def cold(fn):
        """`fn` on an engine that has not read this voice's reference before (its prefix cache emptied)."""
        return lambda: engine.clear_prefix_cache() or fn()

    def streamed(size: int, chunk_frames: int | None = None):
        """A batch of `size` streams consumed to the end (their first audio asserted to come before it)."""
        def run():
            requests = [request(i) for i in range(size)]
            prompts = [first_prompt(engine, r) for r in requests]
            settings = [r.settings if chunk_frames is None else replace(r.settings, stream_chunk_frames=chunk_frames)
                        for r in requests]
            first, steps_done = None, 0
            for steps_done, deltas in enumerate(engine.stream_prompts(prompts, settings), 1):
                if first is None and any(d.audio is not None and len(d.audio) for d in deltas):
                    first = steps_done
            assert first is not None and first < steps_done
            return first
        return run

    unshared = f"batch_{args.batch}_no_prefix_sharing"
    stream_b, stream_b1 = f"stream_batch_{args.batch}", f"stream_batch_{args.batch}_one_frame_chunks"
    runs = {"batch_1": batch_of(1), "batch_1_cold": cold(batch_of(1)), f"batch_{args.batch}": batch_of(args.batch),
            unshared: batch_of(args.batch, False), "first_audio": first_audio, "first_audio_cold": cold(first_audio),
            stream_b: streamed(args.batch), stream_b1: streamed(args.batch, 1)}
    if engine.take_scorer is not None:  # a model that can choose among takes
        runs[f"batch_1_best_of_{TAKES}"] = batch_of(1, takes=TAKES)
    peers = peer_runs(text, args.threads)
    runs.update(peers)
    batch_of(1)()  # warm-up
    first_audio()
    for say in peers.values():  # loads the peer's model
        say()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    outputs, first_audio_runs, outputs_cold = {}, [], []
    for _ in range(args.rounds):  # alternate, so changes in machine load hit every variant alike
        for name, fn in runs.items():
            wall, cpu, outputs[name] = timed(fn)
            times[name].append((wall, cpu))
            if name == "first_audio":
                first_audio_runs.append(outputs[name])
            if name == "first_audio_cold":
                outputs_cold.append(outputs[name])
    median = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    prefill_s = statistics.median(p for _, p in first_audio_runs)
    prefill_cold_s = statistics.median(p for _, p in outputs_cold)
    median_cpu = {name: statistics.median(c for _, c in v) for name, v in times.items()}

    # Baseline (a): the same decode without a KV cache, projected from 5 timed steps, plus the same codec decode.
    columns = [d.audio_tokens for d in speak_stream(engine, request(0)) if d.audio_tokens is not None]
    codes = outputs["batch_1"][0].generated_audio_tokens
    codec_seconds = min(timed(lambda: engine.audio_tokenizer.decode(codes))[0] for _ in range(2))
    no_cache = no_cache_step_seconds(engine, prompt, columns)
    no_cache_total = statistics.mean(s for _, s in no_cache) * steps + codec_seconds
    step_ms = step_comparison(engine, prompt, [1, args.batch], steps, args.rounds)
    # What batching cannot share: every request's prefill and codec decode (decode steps taken as free).
    ceiling = median["batch_1"] / (prefill_cold_s + codec_seconds)

    rtf = median["batch_1"] / audio_seconds
    rtf_cpu = median_cpu["batch_1"] / audio_seconds
    rtf_cold = median["batch_1_cold"] / audio_seconds
    best_of = f"batch_1_best_of_{TAKES}"
    rtf_takes = median[best_of] / audio_seconds if best_of in median else None
    rtf_no_cache = no_cache_total / audio_seconds
    throughput_1 = audio_seconds / median["batch_1"]
    throughput_b = args.batch * audio_seconds / median[f"batch_{args.batch}"]
    throughput_unshared = args.batch * audio_seconds / median[unshared]
    first_ms, first_cold_ms = 1000 * median["first_audio"], 1000 * median["first_audio_cold"]
    peer_seconds = {name: len(outputs[f"peer_{name}"]) / SAMPLE_RATE for name in PEERS if f"peer_{name}" in peers}
    peer_rtf = {name: median[f"peer_{name}"] / seconds for name, seconds in peer_seconds.items()}
    result = {
        "model": source, "text": text,
        "params": sum(p.numel() for p in engine.model.parameters()),
        "prompt_positions": len(expand_sample(prompt, engine.config)),
        "frames": args.frames, "audio_seconds": audio_seconds, "decode_steps": steps,
        "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        "rtf_batch_1": round(rtf, 4), "rtf_batch_1_cpu": round(rtf_cpu, 4), "rtf_batch_1_cold": round(rtf_cold, 4),
        "ratio_cold_over_ours": round(rtf_cold / rtf, 2),
        f"rtf_{best_of}": None if rtf_takes is None else round(rtf_takes, 4),
        "rtf_no_kv_cache_projected": round(rtf_no_cache, 4),
        "ratio_no_kv_cache_over_ours": round(rtf_no_cache / rtf, 2),
        "no_kv_cache_step_seconds": [{"prefix": p, "seconds": round(s, 4)} for p, s in no_cache],
        "codec_decode_seconds": round(codec_seconds, 4),
        "first_audio_ms": round(first_ms, 1), "first_audio_steps": outputs["first_audio"][0],
        "prefill_ms": round(1000 * prefill_s, 1),
        "first_audio_cold_ms": round(first_cold_ms, 1), "prefill_cold_ms": round(1000 * prefill_cold_s, 1),
        "stream_wall_s": {stream_b: round(median[stream_b], 3), stream_b1: round(median[stream_b1], 3),
                          f"batch_{args.batch}_whole": round(median[f"batch_{args.batch}"], 3)},
        "ratio_stream_over_whole": round(median[stream_b] / median[f"batch_{args.batch}"], 2),
        "ratio_one_frame_chunks_over_stream": round(median[stream_b1] / median[stream_b], 2),
        "codec_lookahead_frames": engine.audio_tokenizer.lookahead_frames,
        "throughput_audio_s_per_s": {"batch_1": round(throughput_1, 3), f"batch_{args.batch}": round(throughput_b, 3),
                                     unshared: round(throughput_unshared, 3)},
        "ratio_batch_over_batch_1": round(throughput_b / throughput_1, 2),
        "ratio_batch_over_batch_1_no_prefix_sharing": round(throughput_unshared / throughput_1, 2),
        # without sharing, every request pays its prefill and codec decode; with it, the codec decode
        "ratio_ceiling_no_prefix_sharing": round(ceiling, 2),
        "ratio_ceiling_prefix_shared": round(median["batch_1"] / codec_seconds, 2),
        "step_ms": step_ms,
        "peers": {name: {"rtf": round(peer_rtf[name], 4), "ratio_ours_over_peer": round(rtf / peer_rtf[name], 2),
                         "audio_seconds": round(peer_seconds[name], 2),
                         "threads": args.threads if PEERS[name].engine == "piper" else 1}
                  if name in peer_rtf else "not installed" for name in PEERS},
        "targets": TARGETS,
        "meets_target": {"rtf": rtf <= TARGETS["rtf"], "rtf_cold": rtf_cold <= TARGETS["rtf"],
                         "first_audio_ms": first_ms <= TARGETS["first_audio_ms"],
                         "first_audio_cold_ms": first_cold_ms <= TARGETS["first_audio_ms"],
                         "batch_speedup": throughput_b / throughput_1 >= TARGETS["batch_speedup"]},
        "load_average_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.python_version()}", "torch": torch.__version__,
    }
    print(f"model: {source} ({result['params'] / 1e6:.1f}M params), prompt {result['prompt_positions']} positions, "
          f"{args.frames} frames ({audio_seconds:.1f} s) per request, {args.threads} threads, load {result['load_average_at_end']:.1f}")
    print(f"every request, and every peer, says {text!r}")
    print(f"{'measure':<34}{'ours':>10}{'baseline':>12}  {'baseline is':<28}{'ratio':>8}  {'target':<10}")
    peer_rows = [(f"RTF batch 1 vs peer {name}", f"{rtf:.3f}", f"{peer_rtf[name]:.3f}",
                  f"{name}, {result['peers'][name]['threads']} thread(s)", f"{rtf / peer_rtf[name]:.1f}x", "")
                 if name in peer_rtf else (f"RTF batch 1 vs peer {name}", f"{rtf:.3f}", "", "not installed", "", "")
                 for name in PEERS]
    rows = [
        ("RTF batch 1 (incl. codec)", f"{rtf:.3f}", f"{rtf_no_cache:.3f}", "no KV cache (projected)",
         f"{rtf_no_cache / rtf:.1f}x", "<= 0.1"),
        ("RTF batch 1, CPU time", f"{rtf_cpu:.3f}", "", "", "", ""),
        ("RTF batch 1, voice read before", f"{rtf:.3f}", f"{rtf_cold:.3f}", "first request of a voice",
         f"{rtf_cold / rtf:.2f}x", ""),
        *([(f"RTF batch 1, best of {TAKES} takes", f"{rtf_takes:.3f}", f"{rtf:.3f}", "one take",
             f"{rtf_takes / rtf:.2f}x", "")] if rtf_takes is not None else []),
        *peer_rows,
        ("time to first audio (ms)", f"{first_ms:.0f}", f"{first_cold_ms:.0f}", "first request of a voice",
         f"{first_cold_ms / first_ms:.2f}x", "<= 250"),
        ("  of which prefill (ms)", f"{1000 * prefill_s:.0f}", f"{1000 * prefill_cold_s:.0f}",
         f"{outputs['first_audio'][0]} steps to first audio", "", ""),
        (f"audio s / wall s, batch {args.batch}", f"{throughput_b:.2f}", f"{throughput_1:.2f}", "batch 1",
         f"{throughput_b / throughput_1:.1f}x",
         f">= {TARGETS['batch_speedup']:g}x (ceiling {median['batch_1'] / codec_seconds:.1f}x)"),
        ("  same, no prefix sharing", f"{throughput_unshared:.2f}", f"{throughput_1:.2f}", "batch 1",
         f"{throughput_unshared / throughput_1:.1f}x", f"(ceiling {ceiling:.1f}x)"),
        (f"wall s, {args.batch} streams", f"{median[stream_b]:.2f}", f"{median[f'batch_{args.batch}']:.2f}",
         f"batch {args.batch} decoded whole", f"{median[stream_b] / median[f'batch_{args.batch}']:.2f}x", ""),
        ("  same, 1-frame chunks", f"{median[stream_b1]:.2f}", f"{median[stream_b]:.2f}", "5-frame chunks",
         f"{median[stream_b1] / median[stream_b]:.2f}x", ""),
    ]
    other_name = "float16" if engine.decoder.weight_dtype == torch.float32 else "float32"
    for batch in (1, args.batch):
        row = step_ms[f"batch_{batch}"]
        ours, previous = row["ours"], row["previous"]["total"]
        rows.append((f"ms per step, batch {batch}", f"{ours['total']:.2f}", f"{previous:.2f}", "previous step loop",
                     f"{row['ratio_previous_over_ours']:.1f}x",
                     f"fwd {ours['forward']:.2f} heads {ours['heads']:.2f} sampling {ours['sampling']:.2f}; "
                     f"{other_name} weights {row['ours_other_weights']['total']:.2f}"
                     + (f"; unshared {row['ours_no_prefix_sharing']['total']:.2f}" if batch > 1 else "")))
    for row in rows:
        print(f"{row[0]:<34}{row[1]:>10}{row[2]:>12}  {row[3]:<28}{row[4]:>8}  {row[5]:<10}")
    print("meets target: " + ", ".join(f"{k} {v}" for k, v in result["meets_target"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

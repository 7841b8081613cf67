"""Speech LM serving speed: real-time factor, time to first streamed audio, and batch throughput.

    python benchmarks/speech.py [--model DIR | --preset small] [--frames 100] [--batch 16] [--rounds 2] [--threads 2]

Every request clones the shipped `joe` voice (its reference as a user/assistant pair) and says one sentence.
EOS is suppressed so every run decodes exactly `--frames` audio frames (25 per second): timings then do not
depend on when a (possibly untrained) model would stop. Measured in one process, against named baselines:

- (a) real-time factor at batch 1 = wall seconds (decode steps + codec decode) / seconds of audio, target <= 0.1.
  Baseline `no_kv_cache`: the same model re-running the whole prefix every step; its step time is measured
  at 5 prefix lengths spread over the same decode and projected to all steps (a full run would take minutes).
- (b) time to first streamed audio from `stream_prompt` (prefill, the decode steps until the delay pattern
  and the codec's lookahead release the first frame, and that frame's decode), target <= 250 ms.
- (c) throughput at batch `--batch` in audio seconds per wall second; baseline: batch 1 in the same run;
  target >= 10x.

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
from pathlib import Path

import numpy as np
import torch

from cadenza.higgs_audio import training
from cadenza.higgs_audio.collator import expand_sample
from cadenza.higgs_audio.dataset import ChatMLDatasetSample
from cadenza.higgs_audio.engine import (
    SHIPPED_MODEL,
    GenerationSettings,
    HiggsAudioServeEngine,
)
from cadenza.higgs_audio.modeling import HiggsAudioModel
from cadenza.higgs_audio.speak import (
    SpeechRequest,
    conversation,
    plan_chunks,
    voice_reference,
)
from cadenza.higgs_audio.text import TextTokenizer

RESULTS = Path(__file__).parent / "results" / "speech.json"
SENTENCE = "The quick brown fox jumps over the lazy dog, and then it runs back home before the rain starts."
TOKENIZER_TEXTS = [SENTENCE, "Hello there.", "How are you today, my friend?"]
TARGETS = {"rtf": 0.1, "first_audio_ms": 250.0, "batch_speedup": 10.0}


def build_engine(model: Path | None, preset: str | None) -> tuple[HiggsAudioServeEngine, str]:
    """The engine of a model directory, or of an untrained preset model saved to a temporary directory."""
    if preset is None and model is None and (SHIPPED_MODEL / "config.json").is_file():
        model = SHIPPED_MODEL
    if model is not None:
        return HiggsAudioServeEngine(model), str(model)
    preset = preset or "small"
    tok = TextTokenizer.build(TOKENIZER_TEXTS)
    config = training.PRESETS[preset](text_vocab_size=tok.vocab_size, **training.token_ids(tok))
    torch.manual_seed(0)
    directory = Path(tempfile.mkdtemp(prefix="speech_bench_"))
    training.save_model(HiggsAudioModel(config), tok, directory, step=0)
    return HiggsAudioServeEngine(directory), f"untrained HiggsAudioConfig.{preset} (no shipped model)"


def suppress_eos(engine: HiggsAudioServeEngine) -> None:
    """Codebook 0 never samples EOS: every decode runs to max_new_tokens."""
    original, eos = engine.model.audio_logits, engine.config.audio_stream_eos_id

    def audio_logits(hidden: torch.Tensor) -> torch.Tensor:
        logits = original(hidden)
        logits[..., 0, eos] = float("-inf")
        return logits

    engine.model.audio_logits = audio_logits


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped one)")
    parser.add_argument("--preset", choices=sorted(training.PRESETS), default=None,
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
    request = SpeechRequest(SENTENCE, {0: voice_reference(engine, "joe")})
    prompt = conversation(request, plan_chunks(SENTENCE, None)[0], [], engine.tokenizer)
    steps = args.frames + n_q + 1  # the all-BOS column, the frames, and the one a cut-off stream holds back
    audio_seconds = args.frames / fps

    def settings(seed: int) -> GenerationSettings:
        return GenerationSettings(max_new_tokens=steps, temperature=0.7, seed=seed)

    def batch_of(size: int):
        def run():
            responses = engine.generate_prompts([prompt] * size, [settings(i) for i in range(size)])
            assert all(r.generated_audio_tokens.shape[1] == args.frames for r in responses)
            return responses
        return run

    def first_audio() -> tuple[int, float]:
        """(decode steps until the first audio, seconds until the first delta: the prefill)."""
        start, prefill = time.perf_counter(), None
        for n, delta in enumerate(engine.stream_prompt(prompt, settings(0)), 1):
            prefill = prefill if prefill is not None else time.perf_counter() - start
            if delta.audio is not None and len(delta.audio):
                return n, prefill
        raise RuntimeError("the stream produced no audio")

    runs = {"batch_1": batch_of(1), f"batch_{args.batch}": batch_of(args.batch), "first_audio": first_audio}
    batch_of(1)()  # warm-up
    first_audio()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    outputs, first_audio_runs = {}, []
    for _ in range(args.rounds):  # alternate, so changes in machine load hit every variant alike
        for name, fn in runs.items():
            wall, cpu, outputs[name] = timed(fn)
            times[name].append((wall, cpu))
            if name == "first_audio":
                first_audio_runs.append(outputs[name])
    median = {name: statistics.median(w for w, _ in v) for name, v in times.items()}
    prefill_s = statistics.median(p for _, p in first_audio_runs)
    median_cpu = {name: statistics.median(c for _, c in v) for name, v in times.items()}

    # Baseline (a): the same decode without a KV cache, projected from 5 timed steps, plus the same codec decode.
    columns = [d.audio_tokens for d in engine.stream_prompt(prompt, settings(0)) if d.audio_tokens is not None]
    codes = outputs["batch_1"][0].generated_audio_tokens
    codec_seconds = min(timed(lambda: engine.audio_tokenizer.decode(codes))[0] for _ in range(2))
    no_cache = no_cache_step_seconds(engine, prompt, columns)
    no_cache_total = statistics.mean(s for _, s in no_cache) * steps + codec_seconds

    rtf = median["batch_1"] / audio_seconds
    rtf_cpu = median_cpu["batch_1"] / audio_seconds
    rtf_no_cache = no_cache_total / audio_seconds
    throughput_1 = audio_seconds / median["batch_1"]
    throughput_b = args.batch * audio_seconds / median[f"batch_{args.batch}"]
    first_ms = 1000 * median["first_audio"]
    result = {
        "model": source,
        "params": sum(p.numel() for p in engine.model.parameters()),
        "prompt_positions": len(expand_sample(prompt, engine.config)),
        "frames": args.frames, "audio_seconds": audio_seconds, "decode_steps": steps,
        "batch": args.batch, "threads": args.threads, "rounds": args.rounds,
        "rtf_batch_1": round(rtf, 4), "rtf_batch_1_cpu": round(rtf_cpu, 4),
        "rtf_no_kv_cache_projected": round(rtf_no_cache, 4),
        "ratio_no_kv_cache_over_ours": round(rtf_no_cache / rtf, 2),
        "no_kv_cache_step_seconds": [{"prefix": p, "seconds": round(s, 4)} for p, s in no_cache],
        "codec_decode_seconds": round(codec_seconds, 4),
        "first_audio_ms": round(first_ms, 1), "first_audio_steps": outputs["first_audio"][0],
        "prefill_ms": round(1000 * prefill_s, 1),
        "codec_lookahead_frames": engine.audio_tokenizer.lookahead_frames,
        "throughput_audio_s_per_s": {"batch_1": round(throughput_1, 3), f"batch_{args.batch}": round(throughput_b, 3)},
        "ratio_batch_over_batch_1": round(throughput_b / throughput_1, 2),
        "targets": TARGETS,
        "meets_target": {"rtf": rtf <= TARGETS["rtf"], "first_audio_ms": first_ms <= TARGETS["first_audio_ms"],
                         "batch_speedup": throughput_b / throughput_1 >= TARGETS["batch_speedup"]},
        "load_average_at_end": os.getloadavg()[0], "cpu_count": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.python_version()}", "torch": torch.__version__,
    }
    print(f"model: {source} ({result['params'] / 1e6:.1f}M params), prompt {result['prompt_positions']} positions, "
          f"{args.frames} frames ({audio_seconds:.1f} s) per request, {args.threads} threads, load {result['load_average_at_end']:.1f}")
    print(f"{'measure':<34}{'ours':>10}{'baseline':>12}  {'baseline is':<28}{'ratio':>8}  {'target':<10}")
    rows = [
        ("RTF batch 1 (incl. codec)", f"{rtf:.3f}", f"{rtf_no_cache:.3f}", "no KV cache (projected)",
         f"{rtf_no_cache / rtf:.1f}x", "<= 0.1"),
        ("RTF batch 1, CPU time", f"{rtf_cpu:.3f}", "", "", "", ""),
        ("time to first audio (ms)", f"{first_ms:.0f}", "",
         f"{outputs['first_audio'][0]} steps, prefill {1000 * prefill_s:.0f} ms", "", "<= 250"),
        (f"audio s / wall s, batch {args.batch}", f"{throughput_b:.2f}", f"{throughput_1:.2f}", "batch 1",
         f"{throughput_b / throughput_1:.1f}x", ">= 10x"),
    ]
    for row in rows:
        print(f"{row[0]:<34}{row[1]:>10}{row[2]:>12}  {row[3]:<28}{row[4]:>8}  {row[5]:<10}")
    print("meets target: " + ", ".join(f"{k} {v}" for k, v in result["meets_target"].items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()

"""HTTP serving speed: audio seconds per wall second and time to first audio (p50 / p95) at several concurrency
levels, beside Piper called directly on the same sentences in the same run.

    python benchmarks/serve.py [--model DIR | --preset small] [--concurrency 1,4,16,64] [--requests 2]
                               [--max-new-tokens 100] [--max-batch 16] [--threads 1]

The server runs in this process (uvicorn on a thread, 127.0.0.1, `cadenza.serve.create_app`). At concurrency c,
c clients each send `--requests` streamed requests one after another (`POST /v1/audio/speech`, 16-bit PCM, the
`joe` voice, one sentence each); a request's time to first audio is the wall time to its first audio bytes.
The speech worker batches whatever is queued (up to `--max-batch`), so throughput should grow with c.

Baseline `piper`: the Piper `joe` voice (what the corpus's natural voice is made with) called directly from c
threads on the same sentences, onnxruntime limited to the same threads; its first audio is its first
synthesized sentence chunk (Piper synthesizes a sentence at a time). Ratios are printed beside it.

Model: as `benchmarks/speech.py` (the shipped one, else an untrained `HiggsAudioConfig.small`; speed does not
depend on the weights). An untrained model rarely stops by itself: its requests run to `--max-new-tokens`
decode steps (25 audio frames a second) per chunk; a sentence with more words than those steps can say at a
reading pace (0.4 s a word: 9 in the default 100) is said in two chunks, as the server says any text that
does not fit. Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import torch
from speech import build_engine

from cadenza.serve import ServerConfig, create_app
from cadenza.serve.background import serve_in_background

RESULTS = Path(__file__).parent / "results" / "serve.json"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog before the rain starts.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A rainbow is a division of white light into many beautiful colors.",
    "She sells sea shells by the sea shore, and the shells she sells are surely sea shells.",
    "The museum opens at nine in the morning and closes at five in the evening.",
    "We will meet at the old bridge when the clock strikes twelve.",
    "Good morning! Today we are going to talk about the weather.",
    "How much wood would a woodchuck chuck if a woodchuck could chuck wood?",
]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def run_level(say, concurrency: int, per_client: int) -> dict:
    """c clients each saying `per_client` sentences one after another; `say(text)` -> (first audio s, audio s)."""
    def client(k: int) -> list[tuple[float, float] | None]:
        return [say(SENTENCES[(k * per_client + j) % len(SENTENCES)]) for j in range(per_client)]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [r for rs in pool.map(client, range(concurrency)) for r in rs]
    wall = time.perf_counter() - start
    done = [r for r in results if r is not None]
    firsts = [first * 1000 for first, _ in done]
    audio = sum(seconds for _, seconds in done)
    return {"concurrency": concurrency, "requests": len(results), "failed": len(results) - len(done),
            "wall_s": round(wall, 2), "audio_s": round(audio, 2), "audio_s_per_s": round(audio / wall, 3),
            "first_audio_p50_ms": round(statistics.median(firsts), 1) if firsts else None,
            "first_audio_p95_ms": round(percentile(firsts, 95), 1) if firsts else None}


def server_say(url: str, max_new_tokens: int, http: httpx.Client):
    """`say` through the server: a streamed pcm request; None when it is not answered 200."""
    def say(text: str) -> tuple[float, float] | None:
        body = {"input": text, "voice": "joe", "response_format": "pcm", "max_new_tokens": max_new_tokens}
        start, first, size = time.perf_counter(), None, 0
        with http.stream("POST", f"{url}/v1/audio/speech", json=body) as response:
            if response.status_code != 200:
                return None
            for chunk in response.iter_bytes():
                first = first if first is not None else time.perf_counter() - start
                size += len(chunk)
        return first or 0.0, size / 2 / 24000

    return say


def piper_say(threads: int):
    """`say` with Piper's joe voice called directly."""
    from cadenza.higgs_audio import corpus_voices

    corpus_voices.set_piper_threads(threads)
    voice = corpus_voices._piper_voice()

    def say(text: str) -> tuple[float, float]:
        start, first, samples, rate = time.perf_counter(), None, 0, voice.config.sample_rate
        for chunk in voice.synthesize(text):
            first = first if first is not None else time.perf_counter() - start
            samples += len(chunk.audio_float_array)
        return first or 0.0, samples / rate

    return say


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="Speech model directory (default: shipped, else untrained small).")
    parser.add_argument("--preset", default=None, help="Untrained preset (small, tiny) instead of a model directory.")
    parser.add_argument("--concurrency", default="1,4,16,64", help="Comma-separated concurrency levels.")
    parser.add_argument("--requests", type=int, default=2, help="Requests each client sends one after another.")
    parser.add_argument("--max-new-tokens", type=int, default=100, help="Decode steps per request (25 frames = 1 s).")
    parser.add_argument("--max-batch", type=int, default=16, help="Speech requests the server decodes together.")
    parser.add_argument("--threads", type=int, default=1, help="Torch (and onnxruntime) threads.")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    torch.set_num_threads(args.threads)
    engine, model_name = build_engine(args.model, args.preset)
    config = ServerConfig(max_new_tokens=args.max_new_tokens, max_batch=args.max_batch, max_queue=max(levels) * 2,
                          threads=args.threads)
    rows = []
    with serve_in_background(create_app(config, engine=engine)) as url, \
            httpx.Client(timeout=600, limits=httpx.Limits(max_connections=max(levels) * 2)) as http:
        say = server_say(url, args.max_new_tokens, http)
        say(SENTENCES[0])  # warm-up: the voice reference is read once
        piper = piper_say(args.threads)
        piper(SENTENCES[0])
        print(f"{'c':>3} {'server audio s/s':>16} {'p50 ms':>8} {'p95 ms':>8} {'failed':>6} | "
              f"{'piper audio s/s':>15} {'p50 ms':>8} {'p95 ms':>8} | {'x piper':>7}")
        for c in levels:
            ours, baseline = run_level(say, c, args.requests), run_level(piper, c, args.requests)
            rows.append({"concurrency": c, "server": ours, "piper": baseline,
                         "throughput_vs_piper": round(ours["audio_s_per_s"] / baseline["audio_s_per_s"], 3),
                         "first_audio_p50_vs_piper": round(ours["first_audio_p50_ms"] / baseline["first_audio_p50_ms"], 2)
                         if ours["first_audio_p50_ms"] else None})
            print_row(rows[-1])
    report = {"model": model_name, "max_new_tokens": args.max_new_tokens, "max_batch": args.max_batch,
              "threads": args.threads, "requests_per_client": args.requests, "machine": platform.machine(),
              "cpus": os.cpu_count(), "levels": rows}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"-> {RESULTS}")


def print_row(row: dict) -> None:
    """One table line: ours, Piper, and the ratios."""
    ours, piper = row["server"], row["piper"]
    print(f"{row['concurrency']:>3} {ours['audio_s_per_s']:>16.2f} {ours['first_audio_p50_ms'] or 0:>8.0f} "
          f"{ours['first_audio_p95_ms'] or 0:>8.0f} {ours['failed']:>6} | {piper['audio_s_per_s']:>15.2f} "
          f"{piper['first_audio_p50_ms']:>8.0f} {piper['first_audio_p95_ms']:>8.0f} | {row['throughput_vs_piper']:>7.3f}")


if __name__ == "__main__":
    main()

"""Staria decoding speed: our StariaGenerator vs x-transformers' own generate(cache_kv=True), same weights.

    python benchmarks/staria_decode.py [--model DIR] [--tokens 512] [--batch 1] [--threads 1] [--rounds 3]

Both decode the same prompt with the same encoder-decoder weights (the shipped small model, or random
weights of its shape with --model random), alternating rounds in one process. Writes
benchmarks/results/staria_decode.json with tokens/s of each, the `speedup`, and how close our decoding
is to the machine's memory-bandwidth bound (bytes that must be read per token / measured bandwidth).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from cadenza.staria.generate import PRETRAINED_DIR, GenerationConfig, StariaGenerator
from cadenza.core.config import load_config
from cadenza.staria.models import StariaSeq2Seq
from cadenza.staria.train import model_config

RESULTS = Path(__file__).parent / "results" / "staria_decode.json"
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "staria_small.yaml"


def memory_bandwidth(bytes_: int = 512 * 2**20, rounds: int = 5) -> float:
    """Bytes/s of a large array copy (read + write) on this machine: the ceiling for streaming weights."""
    src = np.ones(bytes_ // 8)
    dst = np.empty_like(src)
    best = min(_timed(lambda: np.copyto(dst, src)) for _ in range(rounds))
    return 2 * src.nbytes / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bytes_per_token(gen: StariaGenerator, prompt: np.ndarray, mean_len: int, batch: int) -> float:
    """Bytes our decoder must read per generated token: the decoder weights a step uses (not cross-attention's
    key and value projections, used once per prompt), the output rows of the ids the grammar allows (a free
    step's notes of the prompt's instruments, <T>, sections and <E>, or the onsets, or the durations: one
    step of three each), KV and cross caches."""
    dec = gen.decoder
    weight_bytes = sum(t.nbytes for b in dec.blocks for name, t in vars(b).items() if name not in ("k", "v"))
    dim = dec.dim
    candidates = gen._candidates([gen.tok.instrument_prefix(prompt)])
    output_bytes = sum(len(ids) for ids in candidates.values()) / len(candidates) * dim * 4
    cache_bytes = dec.n_self * 2 * mean_len * dim * 4 * batch + dec.n_self * 2 * len(prompt) * dim * 4 * batch
    return (weight_bytes + output_bytes + cache_bytes) / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="exported generator dir, or 'random' (default: shipped)")
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    if args.model == "random" or (args.model is None and not PRETRAINED_DIR.exists()):
        # The shipped model's shape (configs/staria_small.yaml) with random weights.
        section = load_config(CONFIG)["model"]
        gen = StariaGenerator(StariaSeq2Seq(model_config(section)).eval())
        model_name = f"random weights, {CONFIG.name} shape"
    else:
        gen = StariaGenerator.from_pretrained(args.model)
        model_name = str(args.model) if args.model else "shipped: src/cadenza/pretrained/staria_small"
    form = "ABAC"
    snippets = gen.snippets(form, None, seed=0)
    prompt = gen.prompt(form, snippets)
    prompts = [prompt] * args.batch
    start = torch.tensor([gen.tok.instrument_prefix(prompt) + [gen.tok.bos_id]] * args.batch)
    prompt_batch = torch.as_tensor(np.stack(prompts))
    prompt_mask = torch.ones_like(prompt_batch, dtype=torch.bool)

    def ours() -> int:
        # repeat="free": every token sampled by the model, as in the baseline (no replayed sections).
        pieces = gen.generate_ids(form, prompts, GenerationConfig(max_tokens=args.tokens, seed=1, repeat="free"))
        return sum(len(p) - start.shape[1] for p in pieces)

    def xtransformers() -> int:
        with torch.inference_mode():
            out = gen.model.model.generate(prompt_batch, start, args.tokens, mask=prompt_mask, cache_kv=True)
        return out.numel()

    contenders = {"cadenza": ours, "x_transformers_generate_cache_kv": xtransformers}
    for fn in contenders.values():  # warm-up
        fn()
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            t = time.perf_counter()
            n = fn()
            rates[name].append(n / (time.perf_counter() - t))

    best = {name: max(r) for name, r in rates.items()}
    bandwidth = memory_bandwidth()
    bound = bandwidth / bytes_per_token(gen, prompt, args.tokens // 2, args.batch)
    result = {
        "model": model_name, "tokens": args.tokens, "batch": args.batch, "threads": args.threads,
        "rounds": args.rounds, "machine": f"{platform.machine()} {platform.python_version()}",
        "tokens_per_s": best, "speedup": best["cadenza"] / best["x_transformers_generate_cache_kv"],
        "memory_bandwidth_gb_s": bandwidth / 1e9, "bandwidth_bound_tokens_per_s": bound,
        "fraction_of_bandwidth_bound": best["cadenza"] / bound,
    }
    print(f"{'decoder':<36}{'tokens/s':>10}")
    for name, rate in best.items():
        print(f"{name:<36}{rate:>10.1f}")
    print(f"speedup: {result['speedup']:.2f}x; bandwidth bound {bound:.0f} tok/s "
          f"({result['fraction_of_bandwidth_bound']:.0%} of it reached)")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

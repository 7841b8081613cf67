"""StariaTokenizer vs miditok REMI: files per second on the same MIDI files, same process, alternating rounds.

    python benchmarks/tokenizer.py [--midi-dir DIR] [--files N] [--rounds R]

Both tokenizers start from the file path (parsing included), as a corpus build does. Writes
benchmarks/results/tokenizer.json with files/s, tokens/s and the speedup ratio.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
from miditok import REMI, TokenizerConfig

from cadenza.staria import StariaTokenizer

RESULTS = Path(__file__).parent / "results" / "tokenizer.json"


def sample_files(midi_dir: Path, n: int, seed: int = 0) -> list[Path]:
    files = sorted(p for p in midi_dir.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
    if not files:
        raise SystemExit(f"no MIDI files under {midi_dir}; build some with `cadenza data music21 DIR`")
    rng = np.random.default_rng(seed)
    return [files[i] for i in rng.permutation(len(files))[:n]]


def run_round(name: str, encode, files: list[Path]) -> tuple[float, int]:
    start = time.perf_counter()
    tokens = 0
    for path in files:
        tokens += encode(path)
    return time.perf_counter() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--midi-dir", type=Path, default=Path("data/music21/midi"))
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    files = sample_files(args.midi_dir, args.files)
    staria = StariaTokenizer()
    remi = REMI(TokenizerConfig(use_programs=True))

    def staria_encode(path: Path) -> int:
        return len(staria.tokenize_ids(path))

    def remi_encode(path: Path) -> int:
        seq = remi.encode(path)
        return len(seq.ids) if hasattr(seq, "ids") else sum(len(s.ids) for s in seq)

    contenders = {"staria": staria_encode, "miditok_remi": remi_encode}
    for encode in contenders.values():  # warm-up: imports, caches, page cache
        run_round("warmup", encode, files[:20])
    times = {name: [] for name in contenders}
    tokens = {}
    for _ in range(args.rounds):
        for name, encode in contenders.items():  # alternate so drift hits both equally
            seconds, count = run_round(name, encode, files)
            times[name].append(seconds)
            tokens[name] = count

    result = {"files": len(files), "rounds": args.rounds, "midi_dir": str(args.midi_dir),
              "machine": f"{platform.machine()} {platform.python_version()}"}
    for name in contenders:
        best = min(times[name])
        result[name] = {"files_per_s": len(files) / best, "tokens_per_s": tokens[name] / best,
                        "tokens_per_file": tokens[name] / len(files), "best_round_s": best}
    result["speedup"] = result["staria"]["files_per_s"] / result["miditok_remi"]["files_per_s"]

    print(f"{'tokenizer':<14}{'files/s':>10}{'tokens/s':>12}{'tok/file':>10}")
    for name in contenders:
        r = result[name]
        print(f"{name:<14}{r['files_per_s']:>10.1f}{r['tokens_per_s']:>12.0f}{r['tokens_per_file']:>10.0f}")
    print(f"speedup (staria / miditok REMI files/s): {result['speedup']:.2f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Calibrate `form_found` (cadenza.staria.form_adherence): acceptance of true forms and of negative controls.

    python benchmarks/form_adherence_calibration.py [--corpus data/music21] [--synth DIR] [--split test]
                                                    [--per-form 40] [--seed 0]

Positives: synthetic pieces of each form (repeated letters replay the same opening, maybe transposed),
and real folk tunes whose two halves are each played twice, marked AABB at their true repeats.
Negative controls, each labelled with the form being tested:
  shuffled     a true synthetic piece whose letters are permuted into a different grouping (ABAB -> AABB)
  random_cuts  a real piece cut at random note onsets (sections of one tune, unrelated to the letters)
  mixed        every section from a different source, so same-letter sections share no material
  stuck        every section is the opening of one source (the generator that never leaves section A)
Varied repeats (informational): a share of the notes of each repeat is moved by 1-3 semitones.
Synthetic pieces come from the corpus split `--split` only (the constants were set on train/val).
Writes benchmarks/results/form_adherence_calibration.json.
"""

from __future__ import annotations

import argparse
import json
import time
from itertools import permutations
from pathlib import Path

import numpy as np

from cadenza.staria.cache import TokenCache
from cadenza.staria.form_adherence import (
    ALIKE, DISTINCT, MIN_SECTION_NOTES, PieceSection, form_adherence, load_piece, split_sections,
)
from cadenza.staria.events import NO_SECTION, MusicEvents
from cadenza.staria.synthetic import SourcePool, opening_notes, synthesize, varied
from cadenza.staria.tokenizer import StariaTokenizer

FORMS = ("ABA", "ABAB", "ABAC", "ABCA", "AABB")
RESULTS = Path(__file__).parent / "results" / "form_adherence_calibration.json"


def stitch(parts: list[tuple[str, MusicEvents]], gap_ms: int = 200) -> list[PieceSection]:
    """Sections played one after another (each shifted to start after the previous one ends)."""
    sections, start = [], 0
    for letter, events in parts:
        shifted = events.shifted(start - int(events.onset_ms[0]))
        shifted.section = np.full(len(shifted), NO_SECTION, dtype=np.int64)
        sections.append(PieceSection(letter, start, shifted.end_ms, shifted))
        start = shifted.end_ms + gap_ms
    return sections


def other_grouping(form: str, rng: np.random.Generator) -> str | None:
    """A permutation of the letters of `form` that groups its positions differently (None if none does)."""
    def grouping(letters):
        return tuple(letters.index(c) for c in letters)
    candidates = sorted({"".join(p) for p in permutations(form) if grouping("".join(p)) != grouping(form)})
    return str(rng.choice(candidates)) if candidates else None


def random_cuts(events: MusicEvents, n: int, rng: np.random.Generator) -> list[np.ndarray] | None:
    """n random contiguous note ranges covering the piece, cut at onsets, each >= MIN_SECTION_NOTES notes."""
    onsets = np.flatnonzero(np.r_[True, events.onset_ms[1:] != events.onset_ms[:-1]])
    for _ in range(50):
        cuts = np.sort(rng.choice(onsets[1:], n - 1, replace=False)) if len(onsets) > n else None
        if cuts is None:
            return None
        bounds = np.r_[0, cuts, len(events)]
        if np.diff(bounds).min() >= MIN_SECTION_NOTES:
            return [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    return None


def repeated_halves(events: MusicEvents) -> list[tuple[str, np.ndarray]] | None:
    """A tune played A A B B (each half repeated exactly): its four sections, else None."""
    pitch, onset = events.pitch, events.onset_ms
    n = len(events)
    ioi = np.diff(onset, append=events.end_ms)
    key = pitch * 100000 + ioi

    def repeats(lo: int, length: int) -> bool:
        return lo + 2 * length <= n and np.array_equal(key[lo:lo + length - 1],
                                                       key[lo + length:lo + 2 * length - 1]) \
            and pitch[lo + length - 1] == pitch[lo + 2 * length - 1]
    for a in range(MIN_SECTION_NOTES, n // 2 + 1):
        if not repeats(0, a):
            continue
        b = (n - 2 * a) // 2
        if b >= MIN_SECTION_NOTES and 2 * a + 2 * b == n and repeats(2 * a, b):
            idx = np.arange(n)
            return [("A", idx[:a]), ("A", idx[a:2 * a]), ("B", idx[2 * a:2 * a + b]), ("B", idx[2 * a + b:])]
    return None


def perturb(events: MusicEvents, share: float, rng: np.random.Generator) -> MusicEvents:
    """`share` of the notes moved by 1-3 semitones up or down."""
    out = events.take(slice(None))
    moved = rng.random(len(out)) < share
    out.pitch = np.clip(out.pitch + moved * rng.choice([-3, -2, -1, 1, 2, 3], len(out)), 0, 127)
    return out


def rate(verdicts: list[bool]) -> dict:
    return {"n": len(verdicts), "accepted": int(sum(verdicts)),
            "rate": round(float(np.mean(verdicts)), 4) if verdicts else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=Path("data/music21"))
    parser.add_argument("--synth", type=Path, default=Path("/tmp/form_calibration_synth"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--per-form", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dump", type=Path, help="Also save every piece's raw descriptor matrices (JSON lines).")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    tok = StariaTokenizer()
    start = time.perf_counter()

    if not (args.synth / "manifest.jsonl").exists():
        synthesize(args.corpus, args.synth, per_form=args.per_form, seed=args.seed,
                   eval_per_form=args.per_form, progress=False)
    synth = TokenCache(args.synth)
    real = TokenCache(args.corpus)
    pool = SourcePool(real, real.indices(args.split), tok)
    real_long = [i for i in real.indices(args.split) if real.rows[i].get("n_notes", 0) >= 6 * MIN_SECTION_NOTES]

    results: dict[str, dict] = {}
    cut_breakdown: dict[tuple[bool, bool], int] = {}  # (tune is itself AABB, accepted) -> count
    pairs: list[tuple[str, bool, dict]] = []  # (control, same letter, raw similarities)
    dump = args.dump.open("w") if args.dump else None

    def judge(control: str, form: str, sections: list[PieceSection], store: bool = True) -> bool:
        result = form_adherence(sections)
        if store:
            for i in range(len(sections)):
                for j in range(i + 1, len(sections)):
                    raw = {k: float(v[i, j]) for k, v in result.descriptor_similarity.items()}
                    raw["combined"] = float(result.similarity[i, j])
                    pairs.append((control, sections[i].letter == sections[j].letter, raw))
        results.setdefault(control, {}).setdefault(form, []).append(result.form_found)
        if dump:
            dump.write(json.dumps({"control": control, "form": form, "letters": result.letters,
                                   "notes": result.section_notes, "raw": {k: v.tolist() for k, v in
                                                                           result.descriptor_similarity.items()}}) + "\n")
        return result.form_found

    for form in FORMS:
        rows = [i for i, r in enumerate(synth.rows) if r["split"] == args.split and r["form"] == form]
        for i in rows[:args.per_form]:
            events, _ = load_piece(np.asarray(synth.ids(i)))
            sections = split_sections(events)
            judge("synthetic", form, sections)
            shuffled = other_grouping(form, rng)
            if shuffled:
                judge("shuffled", form, [PieceSection(c, s.start_ms, s.end_ms, s.events)
                                         for c, s in zip(shuffled, sections)])
            # varied repeats: every later occurrence of a letter gets a share of its notes moved
            for share in (0.1, 0.25, 0.5):
                seen, parts = set(), []
                for s in sections:
                    parts.append((s.letter, perturb(s.events, share, rng) if s.letter in seen else s.events))
                    seen.add(s.letter)
                judge(f"varied_{int(share * 100)}pct", form, stitch(parts), store=False)

        for _ in range(args.per_form):
            # mixed: a distinct source for every position
            needs = {str(k): int(rng.integers(40, 600)) for k in range(len(form))}
            sources = pool.choose(needs, rng)
            parts = []
            for k, letter in enumerate(form):
                source = pool.events(sources[str(k)])
                parts.append((letter, source.take(slice(0, opening_notes(source, needs[str(k)])))))
            judge("mixed", form, stitch(parts))
            # stuck: every position re-cuts the opening of one source
            source = pool.events(sources["0"])
            parts = []
            for letter in form:
                opening = source.take(slice(0, opening_notes(source, int(rng.integers(150, 600)))))
                parts.append((letter, varied(opening, int(rng.choice([0, 0, 1, -1, 2, -2])), 0)))
            judge("stuck", form, stitch(parts))
            # random cuts of one real piece
            for _attempt in range(20):
                events, _ = tok.ids_to_events(real.ids(int(rng.choice(real_long))))
                cuts = random_cuts(events, len(form), rng)
                if cuts is not None:
                    accepted = judge("random_cuts", form, stitch([(c, events.take(idx)) for c, idx in zip(form, cuts)]))
                    structured = repeated_halves(events) is not None
                    cut_breakdown[(structured, accepted)] = cut_breakdown.get((structured, accepted), 0) + 1
                    break

    # real AABB tunes at their true repeats (a realistic positive: A and B are halves of one tune)
    found = 0
    for i in real.indices(args.split):
        events, _ = tok.ids_to_events(real.ids(i))
        halves = repeated_halves(events)
        if halves is not None:
            judge("real_aabb", "AABB", stitch([(c, events.take(idx)) for c, idx in halves]), store=True)
            found += 1

    summary = {control: {form: rate(v) for form, v in by_form.items()} | {"all": rate(sum(by_form.values(), []))}
               for control, by_form in results.items()}
    report = {"split": args.split, "per_form": args.per_form, "seed": args.seed, "corpus": str(args.corpus),
              "thresholds": {"alike": ALIKE, "distinct": DISTINCT, "min_section_notes": MIN_SECTION_NOTES},
              "acceptance": summary, "seconds": round(time.perf_counter() - start, 1)}
    for control in ("synthetic", "real_aabb", "varied_10pct", "varied_25pct", "varied_50pct",
                    "shuffled", "random_cuts", "mixed", "stuck"):
        if control in summary:
            row = summary[control]
            cells = "  ".join(f"{f} {row[f]['rate']:.2f}" for f in (*FORMS, "all") if f in row)
            print(f"{control:14s} {cells}  (n={row['all']['n']})")
    for control in sorted({c for c, _, _ in pairs}):
        for same in (True, False):
            values = np.array([raw["combined"] for c, s, raw in pairs if c == control and s == same])
            if len(values):
                q = np.percentile(values, [1, 5, 50, 95, 99])
                print(f"  {control:12s} {'same' if same else 'diff'} pairs {len(values):5d}  "
                      f"p1 {q[0]:.2f} p5 {q[1]:.2f} p50 {q[2]:.2f} p95 {q[3]:.2f} p99 {q[4]:.2f}")
    # Chance levels: median raw similarity per descriptor of different-source sections (evaluate.CHANCE).
    different = [raw for c, same, raw in pairs if c == "synthetic" and not same]
    chance = {k: round(float(np.median([raw[k] for raw in different])), 3) for k in different[0] if k != "combined"}
    print("chance levels (median raw similarity, different-letter pairs of synthetic pieces):", chance)
    report["chance_levels"] = chance
    # Random cuts that pass are mostly cuts of tunes that really repeat (A A B B) landing near their repeats.
    breakdown = {("aabb_tunes" if structured else "other_tunes"): {
        "n": cut_breakdown.get((structured, True), 0) + cut_breakdown.get((structured, False), 0),
        "accepted": cut_breakdown.get((structured, True), 0)} for structured in (True, False)}
    print("random_cuts by tune:", breakdown)
    report["random_cuts_by_tune"] = breakdown
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    if dump:
        dump.close()
    print(f"{time.perf_counter() - start:.0f} s -> {RESULTS}")


if __name__ == "__main__":
    main()

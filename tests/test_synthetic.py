"""Synthetic structured pieces: labels, forms, repeated material, balance, seeds and split hygiene."""

from collections import Counter

import numpy as np
import pytest

from cadenza.staria import FORM_LABEL_MAP, StariaTokenizer, form_from_labels
from cadenza.staria.cache import TokenCache
from cadenza.staria.events import DRUM, NO_SECTION, MusicEvents
from cadenza.staria.forms import condense
from cadenza.staria.synthetic import (
    MAX_TOKENS, opening_notes, section_letters, split_lengths, synthesize, varied,
)
from cadenza.staria.tokenizer import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok() -> StariaTokenizer:
    return StariaTokenizer()


@pytest.fixture(scope="module")
def synth(synthetic_corpus) -> TokenCache:
    return TokenCache(synthetic_corpus)


@pytest.fixture(scope="module")
def real(real_corpus) -> TokenCache:
    return TokenCache(real_corpus)


def sections_of(events: MusicEvents) -> list[MusicEvents]:
    """Split notes at each section start."""
    starts = [*np.flatnonzero(events.section != NO_SECTION), len(events)]
    return [events.take(slice(a, b)) for a, b in zip(starts[:-1], starts[1:])]


def test_every_token_labelled_and_form_spelled(synth, tok):
    for i in range(len(synth)):
        ids, form = synth.ids(i), synth.rows[i]["form"]
        labels = tok.section_labels(ids)
        assert (labels != IGNORE_INDEX).all() and len(labels) == len(ids)
        assert section_letters(tok, ids) == form
        # Per-token labels cannot separate adjacent repeats ("AABB" reads "AB"); all others read exactly.
        assert form_from_labels(labels) == condense(form)
        if condense(form) == form:
            assert form_from_labels(labels) == form
        assert synth.rows[i]["form_label"] == FORM_LABEL_MAP[form]
        assert len(ids) <= MAX_TOKENS + 1


def test_labels_per_section_match_the_form(synth, tok):
    for i in range(len(synth)):
        ids, form = np.asarray(synth.ids(i)), synth.rows[i]["form"]
        labels = tok.section_labels(ids)
        starts = [*np.flatnonzero(np.isin(ids, tok.section_ids)), len(ids)]
        for letter, a, b in zip(form, starts[:-1], starts[1:]):
            assert set(labels[a:b].tolist()) == {"ABCD".index(letter)}


def test_sections_are_openings_and_repeats_are_the_same_material(synth, real, tok):
    real_by_id = {row["id"]: i for i, row in enumerate(real.rows)}
    n_varied = 0
    for i in range(len(synth)):
        row = synth.rows[i]
        events, dropped = tok.ids_to_events(synth.ids(i))
        assert dropped == 0
        sections = sections_of(events)
        assert len(sections) == len(row["form"]) == len(row["sections"])
        for section, meta in zip(sections, row["sections"]):
            assert len(section) == meta["n_notes"] > 0
            assert section.onset_ms[0] == meta["start_ms"]
            source, _ = tok.ids_to_events(real.ids(real_by_id[meta["source"]]))
            opening = source.take(slice(0, len(section)))
            melodic = section.instrument != DRUM
            n_varied += bool(meta["transpose"] or meta["velocity_shift"])
            # The section is the opening of its source, moved in time and (maybe) varied.
            assert np.array_equal(section.onset_ms - section.onset_ms[0],
                                  opening.onset_ms - opening.onset_ms[0])
            assert np.array_equal(section.duration_ms, opening.duration_ms)
            assert np.array_equal(section.instrument, opening.instrument)
            assert np.array_equal(section.pitch, opening.pitch + np.where(melodic, meta["transpose"], 0))
            velocity = np.where(melodic, np.clip(opening.velocity + meta["velocity_shift"], 10, 120),
                                opening.velocity)
            assert np.array_equal(section.velocity, velocity)
        # Every occurrence of a letter replays the first occurrence's notes (over their common length).
        first: dict[str, tuple[MusicEvents, dict]] = {}
        for section, meta in zip(sections, row["sections"]):
            if meta["letter"] not in first:
                assert meta["transpose"] == meta["velocity_shift"] == 0
                first[meta["letter"]] = (section, meta)
                continue
            ref, ref_meta = first[meta["letter"]]
            assert meta["source"] == ref_meta["source"]
            n = min(len(ref), len(section))
            a, b = ref.take(slice(0, n)), section.take(slice(0, n))
            assert np.array_equal(a.onset_ms - a.onset_ms[0], b.onset_ms - b.onset_ms[0])
            assert np.array_equal(a.duration_ms, b.duration_ms)
            transposed = np.where(a.instrument == DRUM, a.pitch, a.pitch + meta["transpose"])
            assert np.array_equal(transposed, b.pitch)
        # Sections follow one another in time.
        for prev, nxt in zip(sections[:-1], sections[1:]):
            assert nxt.onset_ms[0] >= prev.end_ms
    assert n_varied > 0  # variation is actually exercised


def test_balanced_across_forms(synth):
    counts = Counter((row["split"], row["form"]) for row in synth.rows)
    for form in FORM_LABEL_MAP:
        assert (counts["train", form], counts["val", form], counts["test", form]) == (3, 1, 1)


def test_sources_are_distinct_and_from_the_same_split(synth, real):
    split_of = {row["id"]: row["split"] for row in real.rows}
    train_sources = set()
    for row in synth.rows:
        assert len(set(row["sources"].values())) == len(set(row["form"]))
        assert {split_of[s] for s in row["sources"].values()} == {row["split"]}
        if row["split"] == "train":
            train_sources |= set(row["sources"].values())
    for row in synth.rows:
        if row["split"] != "train":
            assert not train_sources & set(row["sources"].values())


def test_reproducible_from_the_seed(real_corpus, synthetic_corpus, tmp_path):
    synthesize(real_corpus, tmp_path / "same", per_form=3, seed=0, eval_per_form=1, progress=False)
    synthesize(real_corpus, tmp_path / "other", per_form=3, seed=1, eval_per_form=1, progress=False)
    for name in ("tokens.bin", "manifest.jsonl", "index.npy"):
        assert (tmp_path / "same" / name).read_bytes() == (synthetic_corpus / name).read_bytes()
    assert (tmp_path / "other" / "tokens.bin").read_bytes() != (synthetic_corpus / "tokens.bin").read_bytes()


def test_split_lengths_respect_the_minimum():
    rng = np.random.default_rng(0)
    for _ in range(200):
        total, n = int(rng.integers(1024, 4096)), int(rng.integers(1, 8))
        parts = split_lengths(total, n, rng)
        assert len(parts) == n and sum(parts) == total
        assert min(parts) >= total / (4 * n) and min(parts) >= 0.06 * total


def test_opening_never_splits_a_chord():
    onsets = np.array([0, 0, 0, 500, 500, 1000, 1500])
    n = len(onsets)
    events = MusicEvents(onsets, np.full(n, 400), np.arange(60, 60 + n), np.full(n, 80), np.zeros(n, int),
                         np.full(n, NO_SECTION))
    assert opening_notes(events, 3) == 3  # one note's worth of tokens still takes the whole first chord
    assert opening_notes(events, 12) == 3  # 4 notes would split the chord at 500 ms: cut back to 3
    assert opening_notes(events, 15) == 5
    assert opening_notes(events, 10_000) == n


def test_variation_leaves_drums_alone():
    events = MusicEvents(np.array([0, 0]), np.array([400, 0]), np.array([60, 36]), np.array([120, 120]),
                         np.array([0, DRUM]), np.full(2, NO_SECTION))
    out = varied(events, transpose=2, velocity_shift=-10)
    assert out.pitch.tolist() == [62, 36] and out.velocity.tolist() == [110, 120]


def test_too_few_train_sources_is_a_clear_error(real_corpus, tmp_path):
    from cadenza.staria.cache import write_cache

    real = TokenCache(real_corpus)
    rows = [dict(real.rows[i], split="train") for i in range(3)]
    write_cache(tmp_path / "tiny", rows, [np.asarray(real.ids(i)) for i in range(3)])
    with pytest.raises(ValueError, match="tiny.*3 usable"):
        synthesize(tmp_path / "tiny", tmp_path / "out", per_form=1, progress=False)


def test_cli_synth(real_corpus, tmp_path):
    from typer.testing import CliRunner

    from cadenza.cli import app

    result = CliRunner().invoke(app, ["data", "synth", str(real_corpus), str(tmp_path / "s"),
                                      "--per-form", "1", "--seed", "3"])
    assert result.exit_code == 0, result.output
    cache = TokenCache(tmp_path / "s")
    assert Counter(row["split"] for row in cache.rows) == {"train": 16, "val": 16, "test": 16}
    missing = CliRunner().invoke(app, ["data", "synth", str(tmp_path / "nope"), str(tmp_path / "t")])
    assert missing.exit_code != 0

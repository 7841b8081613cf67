"""StariaTokenizer on real files (Bach chorales, folk tunes) and on multi-track GM files built here.

Note timings are checked against mido's own tempo-map arithmetic, independent of symusic.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import symusic

from cadenza.staria import MidiError, StariaTokenizer
from cadenza.staria.events import SEGMENT_MS
from cadenza.staria.tokenizer import FORM_TOKENS, SECTION_TOKENS
from midi_samples import mido_onsets, multitrack_midi

MUSIC21_CORPUS = Path(__import__("music21").__file__).parent / "corpus"
ABC2MIDI = Path(symusic.__file__).parent / "bin" / "abc2midi"


@pytest.fixture(scope="module")
def tok() -> StariaTokenizer:
    return StariaTokenizer()


@pytest.fixture(scope="module")
def real_midis(tmp_path_factory) -> list[Path]:
    """A few Bach chorales (music21 MusicXML -> MIDI) and folk tunes (ABC -> MIDI via abc2midi)."""
    from music21 import corpus

    out = tmp_path_factory.mktemp("real")
    paths = []
    for name in ("bach/bwv66.6", "bach/bwv269", "bach/bwv4.8"):
        path = out / (name.replace("/", "_") + ".mid")
        corpus.parse(name).write("midi", fp=str(path))
        paths.append(path)
    for abc in ("essenFolksong/altdeu10.abc", "essenFolksong/han1.abc", "ryansMammoth/ryansMammoth1.abc"):
        abc_path = MUSIC21_CORPUS / abc
        if not abc_path.exists():
            continue
        for number in range(1, 12):
            path = out / f"{abc_path.stem}_{number}.mid"
            subprocess.run([str(ABC2MIDI), str(abc_path), str(number), "-o", str(path)],
                           capture_output=True, timeout=30)
            if path.exists() and path.stat().st_size > 0:
                paths.append(path)
    assert len(paths) >= 20
    return paths


def note_survival(original: bytes, tok: StariaTokenizer) -> float:
    """Fraction of original notes found after tokenize -> detokenize with exact pitch, onset within 10 ms."""
    score = tok.detokenize(tok.tokenize(original))
    got: dict[tuple[int, bool], np.ndarray] = {}
    for track in score.tracks:
        arr = track.notes.numpy()
        for pitch in np.unique(arr["pitch"]):
            key = (int(pitch), bool(track.is_drum))
            times = arr["time"][arr["pitch"] == pitch].astype(float)  # 1 tick == 1 ms
            got[key] = np.concatenate([got.get(key, np.zeros(0)), times])
    notes = mido_onsets(original)
    found = sum(
        1 for onset, pitch, drum in notes
        if (pitch, drum) in got and np.min(np.abs(got[(pitch, drum)] - onset)) <= 10.0
    )
    return found / len(notes)


def test_vocab_has_aria_and_staria_tokens(tok):
    for token in ("<S>", "<E>", "<P>", "<U>", "<D>", "<T>", "<PROMPT_START>", "<PROMPT_END>",
                  *SECTION_TOKENS, *FORM_TOKENS, ("onset", 4990), ("dur", 10), ("dur", 5000),
                  ("drum", 38), ("piano", 60, 70)):
        assert token in tok.token_to_id, token
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert len(FORM_TOKENS) == 16


def test_real_files_round_trip_exactly(tok, real_midis):
    for path in real_midis:
        tokens = tok.tokenize(path)
        assert tokens[-1] == "<E>" and "<S>" in tokens
        assert tok.tokenize(tok.detokenize(tokens)) == tokens, path
        # Through a MIDI file on disk too (what a user does with the output).
        midi_bytes = tok.detokenize(tokens).dumps_midi()
        assert tok.tokenize(midi_bytes) == tokens, path
        assert tok.decode(tok.encode(tokens)) == tokens
        assert np.array_equal(tok.tokenize_ids(path), tok.encode(tokens))


def test_real_files_keep_every_note(tok, real_midis):
    for path in real_midis:
        assert note_survival(path.read_bytes(), tok) == 1.0, path


@pytest.mark.parametrize("seed", range(6))
def test_multitrack_drums_tempo_pedal_round_trip(tok, seed):
    data = multitrack_midi(seed)
    tokens = tok.tokenize(data)
    assert ("prefix", "instrument", "drum") in tokens and ("prefix", "instrument", "bass") in tokens
    assert any(isinstance(t, tuple) and t[0] == "drum" for t in tokens)
    assert tok.tokenize(tok.detokenize(tokens)) == tokens
    assert note_survival(data, tok) >= 0.99


def test_sustain_pedal_extends_durations(tok):
    with_pedal = tok.events(multitrack_midi(3, pedal=True))
    without = tok.events(multitrack_midi(3, pedal=False))
    piano = with_pedal.instrument == 0
    assert with_pedal.duration_ms[piano].sum() > without.duration_ms[without.instrument == 0].sum()


def test_time_segments_and_onsets(tok):
    tokens = tok.tokenize(multitrack_midi(1))
    segments = tokens.count("<T>")
    last_onset = tok.events(multitrack_midi(1)).onset_ms.max()
    assert segments == last_onset // SEGMENT_MS
    assert all(0 <= t[1] < SEGMENT_MS for t in tokens if isinstance(t, tuple) and t[0] == "onset")


def test_section_markers_round_trip(tok, real_midis):
    ids = tok.tokenize_ids(real_midis[0])
    events, _ = tok.ids_to_events(ids)
    events.section[0], events.section[len(events) // 2] = 0, 1
    with_sections = tok.events_to_ids(events)
    score = tok.detokenize(with_sections)
    assert [m.text for m in score.markers] == ["A", "B"]
    assert np.array_equal(tok.tokenize_ids(score), with_sections)
    assert np.array_equal(tok.tokenize_ids(score.dumps_midi()), with_sections)
    labels = tok.section_labels(with_sections)
    assert set(labels.tolist()) == {0, 1} and labels[0] == 0 and labels[-1] == 1
    stripped, stripped_labels = tok.strip_sections(with_sections)
    assert np.array_equal(stripped, ids) and len(stripped_labels) == len(ids)


def test_detokenize_never_crashes_on_random_ids(tok):
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 400))
        if trial % 3 == 0:  # pure noise, including out-of-range and negative ids
            ids = rng.integers(-50, len(tok) + 50, size=n)
        else:  # plausible tokens in random order: the hard case for a grammar
            ids = rng.choice(np.r_[0:40, tok._onset_base:tok._onset_base + 1500,
                                   tok._note_base:tok._note_base + 3000], size=n)
        score, dropped = tok.detokenize(ids.tolist(), return_dropped=True)
        assert dropped >= 0
        # Whatever came out is a clean piece: it tokenizes and round-trips from then on.
        again = tok.tokenize(score)
        assert tok.tokenize(tok.detokenize(again)) == again


def test_detokenize_counts_invalid_tokens(tok):
    tokens = ["<S>", ("piano", 60, 80), ("onset", 0), ("dur", 500),  # a good note
              ("piano", 62, 80), ("dur", 100),  # missing onset: dropped (2 tokens)
              ("onset", 20),  # orphan onset (1)
              "not a token",  # unknown (1)
              ("drum", 38), ("onset", 40), "<E>"]
    score, dropped = tok.detokenize(tokens, return_dropped=True)
    assert dropped == 4
    assert score.note_num() == 2


def test_prompt_region_is_not_part_of_the_piece(tok):
    note = [("piano", 60, 80), ("onset", 0), ("dur", 100)]
    tokens = ["<PROMPT_START>", "<ABA>", "<A_SECTION>", *note, "<PROMPT_END>", "<S>", *note, "<E>"]
    assert tok.detokenize(tokens).note_num() == 1


def test_augmentation(tok, real_midis):
    tokens = tok.tokenize(real_midis[0])
    base = tok.events(real_midis[0])
    up = tok.ids_to_events(tok.encode(tok.augment(tokens, pitch_shift=3)))[0]
    assert np.array_equal(up.pitch, base.pitch + 3)
    loud = tok.ids_to_events(tok.encode(tok.augment(tokens, velocity_shift=200)))[0]
    assert (loud.velocity == 120).all()
    slow = tok.ids_to_events(tok.encode(tok.augment(tokens, tempo_scale=0.5)))[0]
    assert abs(slow.onset_ms.max() - 2 * base.onset_ms.max()) <= 10


def test_vocab_save_load(tok, tmp_path):
    tok.save(tmp_path / "vocab.json")
    assert StariaTokenizer.load(tmp_path / "vocab.json").vocab == tok.vocab
    (tmp_path / "other.json").write_text('{"vocab": ["<S>"]}')
    with pytest.raises(ValueError, match="other.json"):
        StariaTokenizer.load(tmp_path / "other.json")


@pytest.mark.parametrize("content, reason", [
    (b"", "empty"),
    (bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8)), "not a MIDI file"),
    (b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100), "WAV"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0", "header only"),
    (b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x10\x00\x90\x3c", "corrupt"),
])
def test_invalid_files_raise_clear_errors(tok, tmp_path, content, reason):
    path = tmp_path / "bad.mid"
    path.write_bytes(content)
    with pytest.raises(MidiError, match="bad.mid") as err:
        tok.tokenize(path)
    assert reason in str(err.value)


def test_missing_file_is_named(tok, tmp_path):
    with pytest.raises(MidiError, match="nope.mid"):
        tok.tokenize(tmp_path / "nope.mid")


def test_sections_survive_notes_dropped_by_augmentation(tok):
    from cadenza.staria.events import MusicEvents

    onset = np.array([0, 500, 1000, 1000, 1500])
    events = MusicEvents(onset, np.full(5, 400), np.array([60, 62, 125, 64, 65]), np.full(5, 80),
                         np.zeros(5, dtype=np.int64), np.array([0, -1, 1, -1, -1]))
    ids = tok.events_to_ids(events)
    shifted = tok.augment_ids(ids, pitch_shift=5)  # the B section's first note (125) leaves the range
    assert tok.detokenize(shifted).note_num() == 4
    assert [m.text for m in tok.detokenize(shifted).markers] == ["A", "B"]
    assert tok.section_labels(shifted)[-2] == 1

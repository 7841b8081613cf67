"""The note-level view: every token maps to its note, and a repeat (later, transposed, louder) looks the
same as its first occurrence apart from pitch and velocity."""

import numpy as np
import torch

from cadenza.staria.events import NO_SECTION, MusicEvents
from cadenza.staria.models import PRESETS, SectionClassifier
from cadenza.staria.notes import NoteEmbedding, time_bucket
from cadenza.staria.tokenizer import K_DUR, K_NOTE, K_ONSET, StariaTokenizer

TOK = StariaTokenizer()


def _phrase(start_ms: int, transpose: int = 0, velocity: int = 80) -> MusicEvents:
    onsets = start_ms + np.array([0, 250, 500, 500, 1250, 2000, 4600, 5100])
    pitches = np.array([60, 62, 64, 67, 65, 60, 72, 71]) + transpose
    n = len(onsets)
    return MusicEvents(onsets, np.array([250, 250, 700, 700, 500, 300, 600, 900]), pitches,
                       np.full(n, velocity), np.zeros(n, dtype=np.int64), np.full(n, NO_SECTION))


def _embed(ids: np.ndarray, module: NoteEmbedding):
    ids = torch.as_tensor(ids.astype(np.int64))[None]
    return module(ids, torch.ones_like(ids, dtype=torch.bool))


def test_every_token_maps_to_its_note():
    ids = TOK.events_to_ids(_phrase(0))
    _, mask, token_to_note = _embed(ids, NoteEmbedding(8))
    kinds, t2n = TOK.kinds(ids), token_to_note[0].numpy()
    starts = np.flatnonzero(kinds == K_NOTE)
    assert mask.sum() == len(starts) == 8
    for k, start in enumerate(starts):
        assert t2n[start] == k and t2n[start + 1] == k and t2n[start + 2] == k
        assert kinds[start + 1] == K_ONSET and kinds[start + 2] == K_DUR
    time_tokens = np.flatnonzero(ids == TOK.time_id)
    assert len(time_tokens) and all(t2n[t] == t2n[t + 1] for t in time_tokens)  # <T> belongs to the next note
    assert t2n[0] == 0  # prefix and <S> too


def test_a_varied_repeat_has_the_same_rhythm_and_intervals():
    events = MusicEvents.concat([_phrase(0), _phrase(6_370, transpose=2, velocity=100)])
    module = NoteEmbedding(16)
    with torch.no_grad():  # keep only what a repeat should share
        module.pitch.weight.zero_()
        module.velocity.weight.zero_()
    notes, mask, _ = _embed(TOK.events_to_ids(events), module)
    first, again = notes[0, :8], notes[0, 8:16]
    # All but the first note of each occurrence (whose predecessor differs) are identical.
    torch.testing.assert_close(first[1:], again[1:])
    assert not torch.allclose(first[0], again[0])


def test_time_buckets_and_an_empty_piece():
    assert time_bucket(torch.tensor([0, 1, 25, 500, 10**7])).tolist() == [0, 4, 18, 35, 63]
    ids = torch.tensor([[TOK.bos_id, TOK.eos_id, TOK.pad_id]])
    notes, mask, token_to_note = NoteEmbedding(8)(ids, torch.tensor([[True, True, False]]))
    assert notes.shape == (1, 1, 8) and not mask.any() and token_to_note.tolist() == [[0, 0, 0]]
    model = SectionClassifier(PRESETS["tiny"].with_overrides(note_level=True))
    sections, forms = model(ids, torch.tensor([[True, True, False]]))
    assert sections.shape == (1, 3, 4) and torch.isfinite(sections).all() and torch.isfinite(forms).all()

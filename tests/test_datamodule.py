"""Datasets and StariaDataModule: shapes, masks, -100 padding, prompt layout, views and labels."""

import numpy as np
import pytest
import torch

from cadenza.staria import FORM_LABEL_MAP, StariaTokenizer
from cadenza.staria.cache import TokenCache
from cadenza.staria.datamodule import (
    ClassificationDataset, Collator, ContrastiveDataset, GenerativeDataset, Pieces, StariaDataModule,
)
from cadenza.staria.events import NO_SECTION
from cadenza.staria.prompt import section_spans, snippet_prompt
from cadenza.staria.tokenizer import IGNORE_INDEX


@pytest.fixture(scope="module")
def tok() -> StariaTokenizer:
    return StariaTokenizer()


@pytest.fixture(scope="module")
def synth_pieces(synthetic_corpus) -> Pieces:
    return Pieces.of_split([TokenCache(synthetic_corpus)], "train")


@pytest.fixture(scope="module")
def real_pieces(real_corpus) -> Pieces:
    return Pieces.of_split([TokenCache(real_corpus)], None)


def test_generative_batch_shift_padding_and_masks(synth_pieces, tok):
    ds = GenerativeDataset(synth_pieces, tok, max_seq_len=1500)
    items = [ds[k] for k in range(6)]
    batch = Collator("generative", tok.pad_id)(items)
    x, y, mask = batch["decoder_input"], batch["target"], batch["decoder_mask"]
    assert mask.dtype == torch.bool and x.dtype == y.dtype == torch.long
    assert x.shape == y.shape == mask.shape and x.shape[1] <= 1500
    for row, item in enumerate(items):
        n = len(item["decoder_input"])
        full = synth_pieces.ids(row)
        assert np.array_equal(x[row, :n].numpy(), full[:n])
        assert np.array_equal(y[row, :n].numpy(), full[1:n + 1])
        assert mask[row, :n].all() and not mask[row, n:].any()
        assert (x[row, n:] == tok.pad_id).all() and (y[row, n:] == IGNORE_INDEX).all()
    lengths = [len(synth_pieces.ids(k)) for k in range(6)]
    assert any(n > 1501 for n in lengths) and any(n < 1501 for n in lengths)  # both cases are exercised
    for row, n in enumerate(lengths):
        if n <= 1501:  # the whole piece fits: the last target is <E>
            assert y[row, n - 2] == tok.eos_id


def test_snippet_prompt_layout(synth_pieces, tok):
    for k in range(len(synth_pieces)):
        ids, row = synth_pieces.ids(k), synth_pieces.row(k)
        prompt = snippet_prompt(tok, ids, snippet_len=256, form=row["form"])
        assert prompt[0] == tok.prompt_start_id and prompt[-1] == tok.prompt_end_id
        assert prompt[1] == tok.form_ids[row["form"]]
        positions = np.flatnonzero(np.isin(prompt, tok.section_ids))
        letters = [tok.decode([prompt[p]])[0][1] for p in positions]
        assert letters == sorted(set(row["form"]))  # each letter once, in order of first appearance
        spans = {letter: (a, b) for letter, a, b in reversed(section_spans(tok, ids))}  # first section wins
        for letter, p, q in zip(letters, positions, [*positions[1:], len(prompt) - 1]):
            a, b = spans[letter]
            snippet = prompt[p + 1:q]
            assert 0 < len(snippet) <= 256
            assert np.array_equal(snippet, ids[a + 1:a + 1 + len(snippet)])
            assert len(snippet) == min(256, b - a - 1)
    assert np.array_equal(snippet_prompt(tok, ids, form=None)[1:2], [tok.section_token_id("A")])


def test_training_cuts_snippets_to_random_lengths_and_validation_does_not(synthetic_corpus, tok):
    data = StariaDataModule(synthetic_corpus, prompt=True, form_token=True, snippet_len=64, min_snippet_len=8)
    data.setup()
    train, val = data.datasets["train"], data.datasets["val"]

    def snippet_lengths(prompt: np.ndarray) -> list[int]:
        marks = [*np.flatnonzero(np.isin(prompt, tok.section_ids)), len(prompt) - 1]
        return [b - a - 1 for a, b in zip(marks, marks[1:])]

    torch.manual_seed(0)
    lengths = [n for k in range(len(train)) for _ in range(3) for n in snippet_lengths(train[k]["encoder_input"])]
    assert min(lengths) >= 8 and max(lengths) <= 64 and len(set(lengths)) > 10
    full = [snippet_lengths(snippet_prompt(tok, val.pieces.ids(k), 64, val.pieces.row(k)["form"]))
            for k in range(len(val))]
    assert [snippet_lengths(val[k]["encoder_input"]) for k in range(len(val))] == full
    with pytest.raises(ValueError, match="min_snippet_len"):
        GenerativeDataset(val.pieces, tok, prompt=True, snippet_len=64, min_snippet_len=65)


def test_generative_with_prompt_batch(synthetic_corpus, real_corpus, tok):
    pieces = Pieces.of_split([TokenCache(synthetic_corpus), TokenCache(real_corpus)], "val")
    ds = GenerativeDataset(pieces, tok, max_seq_len=4096, prompt=True, form_token=True)
    items = [ds[k] for k in range(len(ds))]
    batch = Collator("generative", tok.pad_id)(items)
    enc, enc_mask = batch["encoder_input"], batch["encoder_mask"]
    assert enc.shape == enc_mask.shape and enc_mask.dtype == torch.bool
    for row, item in enumerate(items):
        n = len(item["encoder_input"])
        assert enc_mask[row, :n].all() and not enc_mask[row, n:].any() and (enc[row, n:] == tok.pad_id).all()
        # The target is the whole piece, section tokens included.
        assert np.array_equal(item["target"], pieces.ids(row)[1:])
    real_item = items[-1]  # an unlabelled real chorale: empty prompt, no form
    assert real_item["encoder_input"].tolist() == [tok.prompt_start_id, tok.prompt_end_id]


def test_contrastive_views_come_from_the_same_piece(real_pieces, tok):
    torch.manual_seed(0)
    ds = ContrastiveDataset(real_pieces, tok, snippet_len=120, velocity_shifts=(0,), tempo_range=(1.0, 1.0))
    for k in range(len(real_pieces)):
        piece, _ = tok.ids_to_events(real_pieces.ids(k))
        item = ds[k]
        assert not np.array_equal(item["view_a"], item["view_b"])
        for view, shift in zip((item["view_a"], item["view_b"]), item["pitch_shift"]):
            assert -5 <= shift <= 5 and not np.isin(view, tok.section_ids).any()
            notes, _ = tok.ids_to_events(view)
            assert len(notes) > 20
            # Undo the pitch shift: the view is a run of consecutive notes of the piece.
            key = np.stack([notes.pitch - shift, notes.duration_ms, notes.onset_ms - notes.onset_ms[0]], 1)
            found = False
            for start in np.flatnonzero(piece.pitch == key[0, 0]):
                window = piece.take(slice(start, start + len(notes)))
                if len(window) == len(notes):
                    other = np.stack([window.pitch, window.duration_ms,
                                      window.onset_ms - window.onset_ms[0]], 1)
                    found |= np.array_equal(np.sort(key, 0), np.sort(other, 0))
            assert found


def test_contrastive_batch_with_full_augmentation(real_pieces, tok):
    torch.manual_seed(1)
    ds = ContrastiveDataset(real_pieces, tok, snippet_len=200)
    batch = Collator("contrastive", tok.pad_id)([ds[k] for k in range(4)])
    assert batch["view_a"].shape[0] == batch["view_b"].shape[0] == 4
    assert batch["view_a"].shape[1] <= 200 and batch["mask_a"].dtype == torch.bool
    assert batch["piece"].tolist() == [0, 1, 2, 3] and batch["pitch_shift"].shape == (4, 2)
    for side in "ab":
        view, mask = batch[f"view_{side}"], batch[f"mask_{side}"]
        assert (view[~mask] == tok.pad_id).all() and mask.sum(1).min() > 50


def test_classification_strips_sections_and_aligns_labels(synth_pieces, real_pieces, tok):
    ds = ClassificationDataset(synth_pieces, tok, max_seq_len=4096)
    items = [ds[k] for k in range(len(ds))]
    for k, item in enumerate(items):
        ids, row = synth_pieces.ids(k), synth_pieces.row(k)
        assert not np.isin(item["input_ids"], tok.section_ids).any()
        assert len(item["input_ids"]) == len(item["section_labels"]) == len(ids) - len(row["form"])
        assert (item["section_labels"] >= 0).all()
        assert item["form_label"] == FORM_LABEL_MAP[row["form"]]
        # Each note's label is the section it was written in.
        notes, _ = tok.ids_to_events(ids)
        opens = np.flatnonzero(notes.section != NO_SECTION)
        note_letter = notes.section[opens][np.searchsorted(opens, np.arange(len(notes)), side="right") - 1]
        note_rows = np.flatnonzero(tok.is_note(item["input_ids"]))
        assert np.array_equal(item["section_labels"][note_rows], note_letter)
    batch = Collator("classification", tok.pad_id)(items[:5])
    mask = batch["attention_mask"]
    assert mask.dtype == torch.bool and (batch["section_labels"][~mask] == IGNORE_INDEX).all()
    assert (batch["input_ids"][~mask] == tok.pad_id).all() and (batch["section_labels"][mask] >= 0).all()
    assert batch["form_label"].shape == (5,)
    real_item = ClassificationDataset(real_pieces, tok)[0]
    assert real_item["form_label"] == IGNORE_INDEX and (real_item["section_labels"] == IGNORE_INDEX).all()
    truncated = ClassificationDataset(synth_pieces, tok, max_seq_len=500)[0]
    assert len(truncated["input_ids"]) == 500 and truncated["form_label"] == IGNORE_INDEX


@pytest.mark.parametrize("task", ["generative", "contrastive", "classification"])
def test_datamodule_mixed_corpora(task, synthetic_corpus, real_corpus):
    dm = StariaDataModule([(synthetic_corpus, 3.0), (real_corpus, 1.0)], task=task, batch_size=4,
                          max_seq_len=512, prompt=True, snippet_len=64, samples_per_epoch=8)
    dm.setup("fit")
    weights = dm.sample_weights(dm.datasets["train"].pieces)
    corpus_of = np.array([c for c, _ in dm.datasets["train"].pieces.items])
    assert weights[corpus_of == 0].sum() == pytest.approx(3.0)
    assert weights[corpus_of == 1].sum() == pytest.approx(1.0)
    loader = dm.train_dataloader()
    assert len(list(loader)) == 2  # samples_per_epoch / batch_size
    for batch in (next(iter(loader)), next(iter(dm.val_dataloader()))):
        assert all(isinstance(v, torch.Tensor) for v in batch.values())
        first = next(iter(batch.values()))
        assert first.shape[0] == 4 and (task == "contrastive" or first.shape[1] <= 512)


def test_datamodule_rejects_bad_arguments(real_corpus):
    with pytest.raises(ValueError, match="unknown task"):
        StariaDataModule(real_corpus, task="nope")
    with pytest.raises(ValueError, match="weight"):
        StariaDataModule([(real_corpus, 0.0)])


def test_contrastive_views_keep_their_key_without_pitch_shift(real_corpus):
    """`data.max_pitch_shift: 0` (configs/staria_encoder_keyed.yaml): no view is transposed."""
    dm = StariaDataModule(real_corpus, task="contrastive", batch_size=4, snippet_len=120, max_pitch_shift=0)
    dm.setup()
    dataset = dm.datasets["train"]
    assert all((dataset[k]["pitch_shift"] == 0).all() for k in range(len(dataset)))

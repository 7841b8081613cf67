"""Datasets and the LightningDataModule for Staria's three tasks, over one or more tokenized corpora.

- `generative`: a piece up to `max_seq_len` tokens as shifted decoder input / target. With `prompt`,
  the encoder input is the piece's own snippet prompt (`prompt.snippet_prompt`: [form token] + per letter
  the first <= `snippet_len` tokens of that letter's first section; with `min_snippet_len`, training cuts
  each letter's snippet to a random length in [min_snippet_len, snippet_len], so the model also learns to
  go on past a short snippet); the target is the whole piece.
- `contrastive`: two augmented views (pitch, velocity, tempo) of snippets from two places of the same piece
  (`snippets`); the other pieces of a batch are the negatives.
- `classification`: the piece without section tokens, its per-token section labels and its form label.

Corpora may be real, synthetic or both: `corpora` is a list of directories or (directory, weight) pairs,
and a weight is the share of training samples drawn from that corpus. Batches are dicts of tensors:
inputs padded with `pad_id`, targets and labels with -100, masks bool (True = a real token).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from lightning import LightningDataModule
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from cadenza.core.data_loader import ResumableDataLoader
from cadenza.staria.cache import TokenCache
from cadenza.staria.forms import FORM_LABEL_MAP, form_from_labels
from cadenza.staria.prompt import snippet_prompt
from cadenza.staria.snippets import Augmentation, cut_snippet, pair_starts, snippet_notes
from cadenza.staria.tokenizer import IGNORE_INDEX, StariaTokenizer

CorpusSpec = Union[str, Path, tuple[Union[str, Path], float]]
TASKS = ("generative", "contrastive", "classification")


def _rng() -> np.random.Generator:
    """A numpy generator seeded from torch's RNG: reproducible under `seed_everything`, and different in
    each DataLoader worker and epoch (torch reseeds workers; numpy state alone would repeat)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


def piece_form(row: dict, tokenizer: StariaTokenizer, ids: np.ndarray) -> str | None:
    """The form of a piece: its manifest's `form`, else what its section labels spell if that is a known
    form, else None."""
    form = row.get("form")
    if form in FORM_LABEL_MAP:
        return form
    labels = tokenizer.section_labels(ids)
    if (labels == IGNORE_INDEX).all():
        return None
    spelled = form_from_labels(labels)
    return spelled if spelled in FORM_LABEL_MAP else None


@dataclass
class Pieces:
    """The pieces of one split across several corpora: (corpus index, piece index) per item."""

    caches: list[TokenCache]
    items: list[tuple[int, int]]

    @classmethod
    def of_split(cls, caches: list[TokenCache], split: str | None) -> "Pieces":
        """All pieces of `split` (None: every piece) of each corpus, corpus by corpus."""
        return cls(caches, [(c, i) for c, cache in enumerate(caches) for i in cache.indices(split)])

    def __len__(self) -> int:
        return len(self.items)

    def ids(self, k: int) -> np.ndarray:
        """Token ids of item k, as a writable int64 array."""
        c, i = self.items[k]
        return np.array(self.caches[c].ids(i), dtype=np.int64)

    def row(self, k: int) -> dict:
        """Manifest row of item k."""
        c, i = self.items[k]
        return self.caches[c].rows[i]


class GenerativeDataset(Dataset):
    """Pieces as decoder input / target (shifted by one), optionally with an encoder snippet prompt
    (each letter's snippet cut to a random length >= `min_snippet_len` if given)."""

    def __init__(self, pieces: Pieces, tokenizer: StariaTokenizer, max_seq_len: int = 4096,
                 prompt: bool = False, form_token: bool = False, snippet_len: int = 256,
                 min_snippet_len: int | None = None) -> None:
        if min_snippet_len is not None and not 1 <= min_snippet_len <= snippet_len:
            raise ValueError(f"min_snippet_len must be in 1..snippet_len ({snippet_len}), got {min_snippet_len}")
        self.pieces, self.tokenizer, self.max_seq_len = pieces, tokenizer, max_seq_len
        self.prompt, self.form_token, self.snippet_len = prompt, form_token, snippet_len
        self.min_snippet_len = min_snippet_len

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, k: int) -> dict[str, np.ndarray]:
        ids = self.pieces.ids(k)
        tokens = ids[:self.max_seq_len + 1]
        item = {"decoder_input": tokens[:-1], "target": tokens[1:]}
        if self.prompt:
            form = piece_form(self.pieces.row(k), self.tokenizer, ids) if self.form_token else None
            rng = _rng() if self.min_snippet_len is not None else None
            item["encoder_input"] = snippet_prompt(self.tokenizer, ids, self.snippet_len, form,
                                                   self.min_snippet_len, rng)
        return item


class ContrastiveDataset(Dataset):
    """Two augmented views of snippets of the same piece, from places that do not overlap (`snippets`:
    about snippet_len / 3 consecutive notes each; pitch, velocity and tempo drawn per view)."""

    def __init__(self, pieces: Pieces, tokenizer: StariaTokenizer, snippet_len: int = 256,
                 max_pitch_shift: int = 5, velocity_shifts: Sequence[int] = (-10, 0, 10),
                 tempo_range: tuple[float, float] = (0.9, 1.1)) -> None:
        self.pieces, self.tokenizer, self.snippet_len = pieces, tokenizer, snippet_len
        self.augmentation = Augmentation(max_pitch_shift, tuple(velocity_shifts), tuple(tempo_range))

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, k: int) -> dict[str, np.ndarray | int]:
        events, _ = self.tokenizer.ids_to_events(self.pieces.ids(k))
        rng = _rng()
        first, second, n_notes = pair_starts(len(events), snippet_notes(self.snippet_len), rng)
        views, shifts = [], []
        for start in (first, second):
            augmentation = self.augmentation.draw(rng)
            views.append(cut_snippet(self.tokenizer, events, start, n_notes, self.snippet_len, augmentation))
            shifts.append(augmentation[0])
        return {"view_a": views[0], "view_b": views[1], "piece": k, "pitch_shift": np.array(shifts)}


class ClassificationDataset(Dataset):
    """The piece without section tokens, a section label per token, and the form label.

    The form label is the manifest's form (else the one its labels spell) when the whole piece fits in
    `max_seq_len`, and IGNORE_INDEX for truncated or unlabelled pieces.
    """

    def __init__(self, pieces: Pieces, tokenizer: StariaTokenizer, max_seq_len: int = 4096) -> None:
        self.pieces, self.tokenizer, self.max_seq_len = pieces, tokenizer, max_seq_len

    def __len__(self) -> int:
        return len(self.pieces)

    def __getitem__(self, k: int) -> dict[str, np.ndarray | int]:
        ids = self.pieces.ids(k)
        stripped, labels = self.tokenizer.strip_sections(ids)
        form = piece_form(self.pieces.row(k), self.tokenizer, ids)
        whole = len(stripped) <= self.max_seq_len
        form_label = FORM_LABEL_MAP[form] if form is not None and whole else IGNORE_INDEX
        return {"input_ids": stripped[:self.max_seq_len], "section_labels": labels[:self.max_seq_len],
                "form_label": form_label}


def _pad(arrays: list[np.ndarray], value: int) -> torch.Tensor:
    return pad_sequence([torch.as_tensor(np.asarray(a), dtype=torch.long) for a in arrays],
                        batch_first=True, padding_value=value)


def _mask(arrays: list[np.ndarray]) -> torch.Tensor:
    lengths = torch.tensor([len(a) for a in arrays], dtype=torch.long)
    return torch.arange(max(lengths.tolist(), default=0))[None, :] < lengths[:, None]


class Collator:
    """Batches a task's items into dicts of padded tensors (pickles, so DataLoader workers can use it)."""

    def __init__(self, task: str, pad_id: int) -> None:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        self.task, self.pad_id = task, pad_id

    def __call__(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        column = {key: [item[key] for item in batch] for key in batch[0]}
        out: dict[str, torch.Tensor] = {}
        if self.task == "generative":
            out["decoder_input"] = _pad(column["decoder_input"], self.pad_id)
            out["target"] = _pad(column["target"], IGNORE_INDEX)
            out["decoder_mask"] = _mask(column["decoder_input"])
            if "encoder_input" in column:
                out["encoder_input"] = _pad(column["encoder_input"], self.pad_id)
                out["encoder_mask"] = _mask(column["encoder_input"])
        elif self.task == "contrastive":
            for side in ("a", "b"):
                out[f"view_{side}"] = _pad(column[f"view_{side}"], self.pad_id)
                out[f"mask_{side}"] = _mask(column[f"view_{side}"])
            out["piece"] = torch.tensor(column["piece"], dtype=torch.long)
            out["pitch_shift"] = torch.as_tensor(np.stack(column["pitch_shift"]), dtype=torch.long)
        else:
            out["input_ids"] = _pad(column["input_ids"], self.pad_id)
            out["attention_mask"] = _mask(column["input_ids"])
            out["section_labels"] = _pad(column["section_labels"], IGNORE_INDEX)
            out["form_label"] = torch.tensor(column["form_label"], dtype=torch.long)
        return out


def parse_corpora(corpora: CorpusSpec | Sequence[CorpusSpec]) -> list[tuple[Path, float]]:
    """Normalise a corpus directory, or a list of directories / (directory, weight) pairs, to pairs."""
    if isinstance(corpora, (str, Path)) or (isinstance(corpora, tuple) and len(corpora) == 2
                                            and isinstance(corpora[1], (int, float))):
        corpora = [corpora]
    pairs = []
    for spec in corpora:
        path, weight = (spec, 1.0) if isinstance(spec, (str, Path)) else spec
        if weight <= 0:
            raise ValueError(f"{path}: corpus weight must be > 0, got {weight}")
        pairs.append((Path(path), float(weight)))
    if not pairs:
        raise ValueError("no corpus given")
    return pairs


class StariaDataModule(LightningDataModule):
    """Train/val/test loaders for one task over real, synthetic or mixed corpora (weighted sampling).

    Training draws `samples_per_epoch` pieces (default: the train split's size) with replacement, by
    corpus weight, when there are several corpora or `samples_per_epoch` is set; else it shuffles.
    """

    def __init__(self, corpora: CorpusSpec | Sequence[CorpusSpec], task: str = "generative",
                 batch_size: int = 8, max_seq_len: int = 4096, prompt: bool = False, form_token: bool = False,
                 snippet_len: int = 256, num_workers: int = 0, samples_per_epoch: int | None = None,
                 min_snippet_len: int | None = None, max_pitch_shift: int = 5) -> None:
        """max_pitch_shift: the contrastive views' transposition range in semitones (0: views keep their key)."""
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
        self.corpora = parse_corpora(corpora)
        self.task, self.batch_size, self.max_seq_len = task, batch_size, max_seq_len
        self.prompt, self.form_token, self.snippet_len = prompt, form_token, snippet_len
        self.num_workers, self.samples_per_epoch = num_workers, samples_per_epoch
        self.min_snippet_len = min_snippet_len  # training only: validation keeps fixed snippets
        self.max_pitch_shift = max_pitch_shift
        self.tokenizer = StariaTokenizer()
        self.collate = Collator(task, self.tokenizer.pad_id)
        self.datasets: dict[str, Dataset] = {}

    def setup(self, stage: str | None = None) -> None:
        """Open the corpora and build the train, val and test datasets."""
        if self.datasets:
            return
        self.caches = [TokenCache(path) for path, _ in self.corpora]
        for split in ("train", "val", "test"):
            self.datasets[split] = self.dataset(Pieces.of_split(self.caches, split), train=split == "train")

    def dataset(self, pieces: Pieces, train: bool = False) -> Dataset:
        """The task's dataset over `pieces` (`train`: with training's random snippet lengths)."""
        if self.task == "generative":
            return GenerativeDataset(pieces, self.tokenizer, self.max_seq_len, self.prompt, self.form_token,
                                     self.snippet_len, self.min_snippet_len if train else None)
        if self.task == "contrastive":
            return ContrastiveDataset(pieces, self.tokenizer, self.snippet_len, self.max_pitch_shift)
        return ClassificationDataset(pieces, self.tokenizer, self.max_seq_len)

    def sample_weights(self, pieces: Pieces) -> torch.Tensor:
        """Per-item sampling weights: each corpus gets its weight's share, spread evenly over its pieces."""
        per_corpus = np.bincount([c for c, _ in pieces.items], minlength=len(self.corpora))
        weights = [self.corpora[c][1] / per_corpus[c] for c, _ in pieces.items]
        return torch.tensor(weights, dtype=torch.double)

    def _loader(self, split: str, train: bool) -> DataLoader:
        dataset = self.datasets[split]
        sampler = None
        if train and (len(self.corpora) > 1 or self.samples_per_epoch):
            sampler = WeightedRandomSampler(self.sample_weights(dataset.pieces),
                                            self.samples_per_epoch or len(dataset), replacement=True)
        elif not train:
            # One fixed shuffle: manifests are grouped (synthetic ones by form), so the first batches of a
            # limited validation would otherwise see only the first forms.
            sampler = np.random.default_rng(0).permutation(len(dataset)).tolist()
        # Resumable: a resumed run skips the batches its interrupted epoch had already trained on.
        return ResumableDataLoader(dataset, batch_size=self.batch_size, shuffle=train and sampler is None,
                                   sampler=sampler, collate_fn=self.collate, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (weighted across corpora when there are several)."""
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in one fixed shuffled order."""
        return self._loader("val", train=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches in one fixed shuffled order."""
        return self._loader("test", train=False)

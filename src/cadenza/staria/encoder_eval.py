"""Same-piece retrieval: does the contrastive snippet encoder place two snippets of one piece together?

For N held-out pieces, two snippets from places of each piece that do not overlap, cut as in training
(`snippets`), without augmentation or with one random augmentation of the second snippet. Both sets are
embedded; every snippet queries the other set (2N queries), and a query is right when its own piece's
snippet is the most similar one (top-1) or among the five most similar (top-5). Ties count against the
query, so an encoder that maps every snippet to the same point scores 0. Chance is 1/N and 5/N.
Issue 16 asks for top-1 >= 90% among >= 100 held-out real pieces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from cadenza.core.checkpoint import CheckpointError, load_config_json, load_model
from cadenza.staria.cache import SPLITS, TokenCache
from cadenza.staria.events import MusicEvents
from cadenza.staria.models import SnippetEncoder, StariaConfig
from cadenza.staria.snippets import NO_AUGMENTATION, Augmentation, cut_snippet, pair_starts, snippet_notes
from cadenza.staria.tokenizer import StariaTokenizer

TARGET = {"top1": 0.90, "n_pieces": 100}
MIN_SNIPPET_NOTES = 8  # a piece needs twice this many notes to give two snippets
DEFAULT_SNIPPET_LEN = 256


def load_encoder(model_dir: str | Path) -> tuple[SnippetEncoder, int]:
    """(encoder in eval mode, the snippet_len it was trained with) from an exported encoder directory."""
    document = load_config_json(model_dir, kind="StariaConfig")
    task = document["extra"].get("task")
    if task not in (None, "encoder"):
        raise CheckpointError(f"{model_dir}: holds a '{task}' model, not a contrastive snippet encoder "
                              "(`cadenza music train encoder` makes one)")
    model, _ = load_model(model_dir, StariaConfig, SnippetEncoder)
    data = document["extra"].get("config", {}).get("data", {})
    return model, int(data.get("snippet_len", DEFAULT_SNIPPET_LEN))


def held_out_pieces(corpus: str | Path, split: str, n_pieces: int, rng: np.random.Generator
                    ) -> list[tuple[str, MusicEvents]]:
    """(id, notes) of `n_pieces` pieces of `split` drawn at random among those with room for two snippets."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if n_pieces < 2:
        raise ValueError(f"need at least 2 pieces to retrieve among, got {n_pieces}")
    cache = TokenCache(corpus)
    indices = cache.indices(split)
    if not indices:
        counts = ", ".join(f"{s} {len(cache.indices(s))}" for s in SPLITS)
        raise ValueError(f"{corpus}: no pieces in split {split!r} ({counts})")
    tokenizer = StariaTokenizer()
    pieces = [(cache.rows[i].get("id", str(i)), tokenizer.ids_to_events(cache.ids(i))[0]) for i in indices]
    long_enough = [piece for piece in pieces if len(piece[1]) >= 2 * MIN_SNIPPET_NOTES]
    if len(long_enough) < n_pieces:
        raise ValueError(f"{corpus}: split {split!r} has {len(long_enough)} pieces of at least "
                         f"{2 * MIN_SNIPPET_NOTES} notes ({len(pieces)} in all), fewer than the {n_pieces} asked for")
    chosen = np.sort(rng.choice(len(long_enough), n_pieces, replace=False))
    return [long_enough[k] for k in chosen]


@torch.inference_mode()
def embed(model: SnippetEncoder, snippets: list[np.ndarray], batch_size: int = 32) -> torch.Tensor:
    """Unit-norm embeddings (n, projection_dim) of token id arrays."""
    pad_id = StariaTokenizer().pad_id
    out = []
    for start in range(0, len(snippets), batch_size):
        batch = [torch.as_tensor(s, dtype=torch.long) for s in snippets[start:start + batch_size]]
        ids = pad_sequence(batch, batch_first=True, padding_value=pad_id)
        mask = torch.arange(ids.shape[1])[None, :] < torch.tensor([len(s) for s in batch])[:, None]
        out.append(model(ids, mask).float())
    return torch.cat(out)


def retrieval_ranks(queries: torch.Tensor, keys: torch.Tensor) -> np.ndarray:
    """Rank (0 = first) of each query's own key (row i's is key i) among all keys by similarity of unit
    vectors; a key as similar as the own one counts as ranked above it."""
    similarity = queries @ keys.T
    own = similarity.diagonal()
    return ((similarity >= own[:, None]).sum(dim=1) - 1).numpy()


def retrieval_scores(ranks: np.ndarray, n: int) -> dict:
    """Top-1 and top-5 retrieval, mean rank (1 = first) and what chance gives, from the ranks (0 = first)
    of queries among `n` keys."""
    return {"n_pieces": n, "top1": float(np.mean(ranks == 0)), "top5": float(np.mean(ranks < 5)),
            "mean_rank": float(ranks.mean() + 1), "chance_top1": 1 / n, "chance_top5": min(5, n) / n}


def evaluate_encoder(model_dir: str | Path, corpus: str | Path, split: str = "test", n_pieces: int = 100,
                     seed: int = 0, augment: bool = False, snippet_len: int | None = None) -> dict:
    """Same-piece retrieval of the encoder in `model_dir` on `n_pieces` pieces of `split` of `corpus`
    (`snippet_len`: tokens per snippet, default what the encoder was trained with; `augment`: the second
    snippet of each piece gets one random training augmentation)."""
    model, trained_len = load_encoder(model_dir)
    snippet_len = trained_len if snippet_len is None else snippet_len
    if not 1 <= snippet_len <= model.cfg.max_prompt_len:
        raise ValueError(f"snippet_len must be in [1, {model.cfg.max_prompt_len}] (the encoder's "
                         f"max_prompt_len), got {snippet_len}")
    rng = np.random.default_rng(seed)
    tokenizer = StariaTokenizer()
    firsts, seconds, records = [], [], []
    for piece_id, events in held_out_pieces(corpus, split, n_pieces, rng):
        first, second, n_notes = pair_starts(len(events), snippet_notes(snippet_len), rng)
        augmentation = Augmentation().draw(rng) if augment else NO_AUGMENTATION
        firsts.append(cut_snippet(tokenizer, events, first, n_notes, snippet_len))
        seconds.append(cut_snippet(tokenizer, events, second, n_notes, snippet_len, augmentation))
        records.append({"id": piece_id, "n_notes": len(events), "snippet_notes": n_notes, "starts": [first, second],
                        "augmentation": list(augmentation)})
    a, b = embed(model, firsts), embed(model, seconds)
    forward, backward = retrieval_ranks(a, b), retrieval_ranks(b, a)  # first -> second, second -> first
    scores = retrieval_scores(np.concatenate([forward, backward]), len(records))
    for record, rank_a, rank_b in zip(records, forward, backward):
        record["ranks"] = [int(rank_a) + 1, int(rank_b) + 1]
    return {
        "model": str(model_dir), "corpus": str(corpus), "split": split, "seed": seed, "augment": augment,
        "snippet_len": snippet_len, **scores,
        "mean_snippet_notes": float(np.mean([r["snippet_notes"] for r in records])),
        "mean_snippet_tokens": float(np.mean([len(s) for s in firsts + seconds])),
        "target": {**TARGET, "met": scores["top1"] >= TARGET["top1"] and scores["n_pieces"] >= TARGET["n_pieces"]},
        "pieces": records,
    }

"""TokenCache: a tokenized corpus on disk, read without re-tokenizing.

Layout of a corpus directory:
  manifest.jsonl   one row per piece: id, source, path, hash, duration_s, n_notes, n_tokens, split
  tokens.bin       int32 token ids of all pieces, concatenated (read as a numpy memmap)
  index.npy        int64 array (N, 2): offset and length of each piece in tokens.bin, manifest order
  report.jsonl     files that were skipped and why (written by the builders)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

MANIFEST, TOKENS, INDEX, REPORT = "manifest.jsonl", "tokens.bin", "index.npy", "report.jsonl"
SPLITS = ("train", "val", "test")


def split_of(content_hash: str) -> str:
    """Deterministic 90/5/5 split from a hex content hash (same file, same split, on any machine)."""
    bucket = int(content_hash[:8], 16) % 100
    return "train" if bucket < 90 else ("val" if bucket < 95 else "test")


class TokenCache:
    """Random access to the token ids and manifest rows of a corpus directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        manifest = self.root / MANIFEST
        if not manifest.exists():
            raise FileNotFoundError(f"{self.root}: not a corpus directory (no {MANIFEST}); "
                                    "build one with `cadenza data music21` or `cadenza data ingest`")
        self.rows: list[dict] = [json.loads(line) for line in manifest.read_text().splitlines() if line]
        self.index = np.load(self.root / INDEX) if self.rows else np.zeros((0, 2), dtype=np.int64)
        tokens_path = self.root / TOKENS
        size = tokens_path.stat().st_size if tokens_path.exists() else 0
        self.tokens = (np.memmap(tokens_path, dtype=np.int32, mode="r") if size
                       else np.zeros(0, dtype=np.int32))
        expected_tokens = int(self.index[-1].sum()) if len(self.index) else 0
        if len(self.index) != len(self.rows) or expected_tokens != len(self.tokens):
            raise ValueError(f"{self.root}: {INDEX} ({len(self.index)} rows), {MANIFEST} ({len(self.rows)} "
                             f"rows) and {TOKENS} ({len(self.tokens)} ids) disagree; rebuild the corpus")

    def __len__(self) -> int:
        return len(self.rows)

    def ids(self, i: int) -> np.ndarray:
        """Token ids of piece i (a read-only view into the memmap)."""
        offset, length = self.index[i]
        return self.tokens[offset:offset + length]

    def indices(self, split: str | None = None) -> list[int]:
        """Piece indices of one split ("train", "val", "test"), or all of them."""
        return [i for i, row in enumerate(self.rows) if split is None or row["split"] == split]


def write_cache(root: str | Path, rows: list[dict], token_arrays: list[np.ndarray]) -> None:
    """Write manifest, tokens and index for `rows` (each with its token array), replacing old files."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    lengths = np.array([len(a) for a in token_arrays], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    # All three files go to temporary names first; the manifest is renamed last, so an interrupted
    # write leaves either the old corpus or the new one (TokenCache also checks they agree).
    with open(root / (TOKENS + ".tmp"), "wb") as f:
        for arr in token_arrays:
            f.write(np.asarray(arr, dtype=np.int32).tobytes())
    with open(root / (INDEX + ".tmp"), "wb") as f:
        np.save(f, np.stack([offsets, lengths], axis=1) if len(rows) else np.zeros((0, 2), np.int64))
    lines = (json.dumps({**row, "n_tokens": int(length)}) + "\n" for row, length in zip(rows, lengths))
    (root / (MANIFEST + ".tmp")).write_text("".join(lines))
    for name in (TOKENS, INDEX, MANIFEST):
        (root / (name + ".tmp")).replace(root / name)

"""The speech corpus' manifest (`CORPUS/manifest.jsonl`, written by `cadenza data speech`): one row per
utterance (id, audio, text, speaker, duration, split, ...), read by training, alignment and evaluation."""

from __future__ import annotations

import json
from pathlib import Path


def read_manifest(corpus_dir: str | Path) -> list[dict]:
    """The rows of `CORPUS/manifest.jsonl`; a clear error when the directory is not a speech corpus."""
    path = Path(corpus_dir) / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{corpus_dir}: not a speech corpus (no manifest.jsonl; build one with `cadenza data speech`)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

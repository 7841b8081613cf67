"""The speech corpus' manifest (`CORPUS/manifest.jsonl`, written by `cadenza data speech`): one row per
utterance (id, audio, text, speaker, duration, split, ...), read by training, alignment and evaluation of
both the speech LM and the audio tokenizer."""

from __future__ import annotations

import json
from pathlib import Path


def read_manifest(corpus: str | Path, split: str | None = None, *, absolute_audio: bool = False) -> list[dict]:
    """The rows of a speech corpus' manifest, optionally of one split.

    `corpus` is the corpus directory or its manifest file. Each row's `audio` is as written (relative to the
    corpus), or with `absolute_audio` a path that can be opened from anywhere. A missing corpus or manifest
    and a line that is not JSON are errors naming the file (and line)."""
    corpus = Path(corpus)
    path = corpus if corpus.suffix == ".jsonl" else corpus / "manifest.jsonl"
    if not path.is_file():
        if path is corpus:
            raise FileNotFoundError(f"{path}: no such manifest (build one with `cadenza data speech`)")
        raise FileNotFoundError(f"{corpus}: not a speech corpus (no manifest.jsonl; build one with `cadenza data speech`)")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: not JSON ({exc})") from exc
        if split is None or row.get("split") == split:
            if absolute_audio:
                row["audio"] = str(path.absolute().parent / row["audio"])
            rows.append(row)
    return rows

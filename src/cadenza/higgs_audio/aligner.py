"""Where each transcript token is spoken: a small CTC phoneme recognizer over audio codes, and forced alignment.

The audio LM's guided-attention heads are pulled towards the transcript token spoken at each audio frame
(`HiggsAudioConfig.guided_attention_*`). A rough guess (tokens spread over the clip by their rough
durations) is 2.1 frames (about one token) from the measured place on average and 4.5 frames at the 90th
percentile (24 h corpus, val split), too loose for a guide a few frames wide. This module measures the
places instead: `CTCAligner` (recognizer.py) recognizes the transcript's sounding tokens from the codec codes the LM trains
on (two outputs per 25 Hz frame, so fast speech still fits CTC's one step per token), and `forced_align`
finds the most likely path of the known transcript through its outputs (CTC Viterbi). `align_corpus` trains
it on a corpus's train split and writes, for every utterance, the audio frame at which each of its
transcript tokens is spoken (`frames.jsonl` beside the codes; -1 for tokens that take no time: word gaps,
stress and length marks, special tokens). A v3 codec needs no aligner trained: its codebook 0 has a CTC
phoneme head of its own (`PhonemeHeadAligner`; training a `CTCAligner` on this corpus takes ~2.5 h of a core).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Container
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from cadenza.higgs_audio.codec.api import SHIPPED_DIR, codec_fingerprint, load_codec
from cadenza.higgs_audio.dataset import FRAMES_FILE, read_frames
from cadenza.higgs_audio.manifest import read_manifest
from cadenza.higgs_audio.recognizer import UPSAMPLE, CTCAligner, PhonemeHeadAligner
from cadenza.higgs_audio.speech_metrics import edit_distance
from cadenza.higgs_audio.text import TextTokenizer, normalize_transcript, phonemize_batch, sounding

log = logging.getLogger(__name__)


def forced_align(log_probs: np.ndarray, targets: list[int], blank: int = 0) -> np.ndarray:
    """CTC Viterbi: the output step [len(targets)] at which each target starts on the best path of
    `targets` through log_probs [T, V] (blanks between them; a repeated token needs a blank in between)."""
    T, S = len(log_probs), 2 * len(targets) + 1
    labels = np.full(S, blank)
    labels[1::2] = targets
    emit = log_probs[:, labels]  # [T, S]
    skip = np.zeros(S, bool)  # s may be reached from s - 2: a token after a different token
    skip[3::2] = labels[3::2] != labels[1:-2:2]
    score = np.full(S, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((T, S), np.int8)  # how far back each state came from: 0, 1 or 2
    for t in range(1, T):
        stay, step = score, np.concatenate([[-np.inf], score[:-1]])
        jump = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        choices = np.stack([stay, step, jump])
        back[t] = choices.argmax(0)
        score = choices.max(0) + emit[t]
    s = S - 1 if S == 1 or score[S - 1] >= score[S - 2] else S - 2
    if not np.isfinite(score[s]):
        raise ValueError(f"{len(targets)} tokens do not fit in {T} recognizer steps")
    starts = np.zeros(len(targets), np.int64)
    for t in range(T - 1, -1, -1):
        if s % 2 == 1:
            starts[s // 2] = t
        s -= int(back[t, s])
    return starts


def token_frames(log_probs: np.ndarray, tokenizer: TextTokenizer, ids: list[int]) -> list[float]:
    """The audio frame (float, 25 Hz) at the middle of each token of a spoken transcript; -1 for silent tokens.
    A token lasts from its first recognizer step to the next token's first step."""
    index = sounding(tokenizer, ids)
    frames = [-1.0] * len(ids)
    if not index:
        return frames
    starts = forced_align(log_probs, [ids[i] for i in index])
    ends = np.append(starts[1:], len(log_probs))
    for i, start, end in zip(index, starts, ends):
        frames[i] = round(float(start + end) / 2 / UPSAMPLE, 2)
    return frames


def _batches(items: list[tuple[np.ndarray, list[int]]], size: int, rng: random.Random):
    """Batches of similar length, in random order."""
    order = sorted(range(len(items)), key=lambda i: items[i][0].shape[1])
    batches = [order[k:k + size] for k in range(0, len(order), size)]
    rng.shuffle(batches)
    for batch in batches:
        codes = [torch.from_numpy(items[i][0].astype(np.int64)) for i in batch]
        lengths = torch.tensor([c.shape[1] for c in codes])
        padded = torch.zeros(len(codes), codes[0].shape[0], int(lengths.max()), dtype=torch.long)
        for row, c in enumerate(codes):
            padded[row, :, :c.shape[1]] = c
        targets = [torch.tensor(items[i][1]) for i in batch]
        yield padded, lengths, targets


def _load(corpus_dir: Path, cache: Path, tokenizer: TextTokenizer, split: str | None,
          skip: Container[str] = ()) -> tuple[list[dict], list]:
    """Manifest rows of a split (None: all) with codes in the cache, except ids in `skip`; their (codes, ids)."""
    rows, items = [], []
    manifest = read_manifest(corpus_dir)
    phonemize_batch([normalize_transcript(row["text"]) for row in manifest])  # one espeak call, cached
    for row in manifest:
        path = cache / f"{row['id']}.npy"
        if (split is None or row["split"] == split) and row["id"] not in skip and path.exists():
            ids = tokenizer.encode(row["text"], spoken=True)
            rows.append(row)
            items.append((np.load(path), ids))
    return rows, items


def train_aligner(items: list[tuple[np.ndarray, list[int]]], tokenizer: TextTokenizer, epochs: int = 3,
                  batch_size: int = 32, lr: float = 3e-3, seed: int = 0) -> CTCAligner:
    """Fit a CTCAligner to (codes, transcript ids) pairs; logs the CTC loss of each epoch."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    n_q = items[0][0].shape[0]
    model = CTCAligner(tokenizer.vocab_size, n_q=n_q)
    targets = [(codes, [ids[i] for i in sounding(tokenizer, ids)]) for codes, ids in items]
    targets = [(c, t) for c, t in targets if t and len(t) <= UPSAMPLE * c.shape[1] // 2]
    steps = epochs * -(-len(targets) // batch_size)
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, lr, total_steps=steps, pct_start=0.1)
    model.train()
    for epoch in range(epochs):
        total, count = 0.0, 0
        for codes, lengths, batch_targets in tqdm(list(_batches(targets, batch_size, rng)), desc=f"aligner epoch {epoch + 1}/{epochs}", mininterval=30):
            log_probs = model(codes, lengths).transpose(0, 1)  # [2T, B, V]
            loss = F.ctc_loss(log_probs, torch.cat(batch_targets), UPSAMPLE * lengths,
                              torch.tensor([len(t) for t in batch_targets]), blank=tokenizer.pad_id, zero_infinity=True)
            optim.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optim.step()
            sched.step()
            total, count = total + loss.item(), count + 1
        log.info("aligner epoch %d: CTC loss %.3f", epoch + 1, total / count)
    return model.eval()


@torch.no_grad()
def token_error_rate(model: CTCAligner, items: list[tuple[np.ndarray, list[int]]], tokenizer: TextTokenizer) -> float:
    """Greedy CTC decoding's edit distance to the sounding tokens, over their count (a check of the recognizer)."""
    errors = total = 0
    for codes, ids in items:
        log_probs = model(torch.from_numpy(codes.astype(np.int64))[None], torch.tensor([codes.shape[1]]))[0]
        best = torch.unique_consecutive(log_probs.argmax(-1)).tolist()
        hyp = [t for t in best if t != tokenizer.pad_id]
        ref = [ids[i] for i in sounding(tokenizer, ids)]
        errors, total = errors + edit_distance(ref, hyp), total + len(ref)
    return errors / max(total, 1)


@torch.no_grad()
def align_corpus(corpus_dir: str | Path, tokenizer: TextTokenizer, codec_dir: str | Path | None = None,
                 epochs: int = 3) -> Path:
    """Train the aligner on the corpus's train split (once; kept as aligner.pt beside the codes) and write
    every encoded utterance's token frames to CORPUS/codes/<codec>/frames.jsonl (incremental: utterances
    already there are kept). Returns that file."""
    corpus_dir = Path(corpus_dir)
    cache = corpus_dir / "codes" / codec_fingerprint(codec_dir)
    if not cache.is_dir():
        raise FileNotFoundError(f"{corpus_dir}: no code cache for this codec; run `cadenza speech encode-corpus {corpus_dir}`")
    weights = cache / "aligner.pt"
    codec = load_codec(codec_dir if codec_dir is not None else SHIPPED_DIR)
    if codec.semantic is not None and codec.semantic.phoneme_head is not None:
        model = PhonemeHeadAligner(codec, tokenizer).eval()
        _, val_items = _load(corpus_dir, cache, tokenizer, "val")
        if val_items:
            log.info("codec phoneme head's token error rate on the val split: %.3f",
                     token_error_rate(model, val_items[:500], tokenizer))
    elif weights.exists():
        model = CTCAligner(tokenizer.vocab_size)
        model.load_state_dict(torch.load(weights, map_location="cpu"))
        model.eval()
    else:
        _, train_items = _load(corpus_dir, cache, tokenizer, "train")
        if not train_items:
            raise ValueError(f"{corpus_dir}: no encoded utterances in the train split")
        with torch.enable_grad():
            model = train_aligner(train_items, tokenizer, epochs=epochs)
        torch.save(model.state_dict(), weights)
        _, val_items = _load(corpus_dir, cache, tokenizer, "val")
        if val_items:
            log.info("aligner token error rate on the val split: %.3f", token_error_rate(model, val_items[:500], tokenizer))
    done = read_frames(cache)
    rows, items = _load(corpus_dir, cache, tokenizer, None, skip=done)
    out, failed = cache / FRAMES_FILE, 0
    with open(out.with_suffix(".tmp"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"id": key, "frames": frames}) + "\n" for key, frames in done.items())
        for row, (codes, ids) in zip(rows, tqdm(items, desc="aligning", mininterval=30)):
            log_probs = model(torch.from_numpy(codes.astype(np.int64))[None], torch.tensor([codes.shape[1]]))[0]
            try:
                frames = token_frames(log_probs.numpy(), tokenizer, ids)
            except ValueError as exc:
                log.warning("%s: not aligned (%s)", row["id"], exc)
                failed += 1
                continue
            f.write(json.dumps({"id": row["id"], "frames": frames}) + "\n")
    out.with_suffix(".tmp").replace(out)
    log.info("aligned %d new utterances (%d failed, %d kept) -> %s", len(rows) - failed, failed, len(done), out)
    return out

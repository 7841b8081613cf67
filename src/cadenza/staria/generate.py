"""Form-following generation: `StariaGenerator.from_pretrained().generate(form="ABA")`.

Decoding runs on `CachedDecoder` (KV cache, one decoder step per token) under three sets of rules:

- the token grammar: after a note comes its onset, after a melodic onset its duration, and onsets within
  a 5 s segment never go backwards, so every sampled token is part of a valid note; a note never starts
  twice at one onset, and at most `max_chord` notes start together (an undertrained model that has lost
  track of time would otherwise pile notes onto the last onset of a segment);
- a form plan: section tokens are not the model's to choose. Each section has a token budget; the next
  planned section token is allowed once a section has used `min_fraction` of it and forced at
  `max_fraction`, `<E>` only after the last section, and a repeated letter gets the length its first
  occurrence took. The decoder is carried through every requested section and cannot get stuck in one;
- repeats (`repeat="copy"`, the default): a letter that comes back replays its first occurrence, re-timed
  to where the piece has got to (a da capo), fed through the decoder token by token so that what follows
  is written knowing the repeat happened. The model writes every new section; `repeat="free"` lets it
  write the repeats too (what the synthetic training pieces teach it: the same opening again);
- classifier-free guidance (`cfg_scale` > 1): logits = uncond + scale * (cond - uncond), the
  unconditional branch seeing only `<PROMPT_START>` and the form token, as in training's prompt dropout.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from symusic import Score
from torch.nn.utils.rnn import pad_sequence

from cadenza.core.checkpoint import load_model
from cadenza.core.fast_decoder import fastest_weight_dtype
from cadenza.core.sampling import SamplingConfig, make_generator, sample
from cadenza.staria.corpus import random_folk_tunes
from cadenza.staria.events import NO_SECTION, SECTION_LETTERS, SEGMENT_MS, TIME_STEP_MS
from cadenza.staria.fast_decoder import CachedDecoder
from cadenza.staria.forms import validate_form
from cadenza.staria.midi import MidiInput
from cadenza.staria.models import StariaConfig, StariaSeq2Seq
from cadenza.staria.prompt import UNCONDITIONAL_LEN, encoder_prompt, prompt_snippets, unconditional_prompt
from cadenza.staria.tokenizer import K_DRUM, K_NOTE, K_ONSET, K_SECTION, K_TIME, StariaTokenizer

PRETRAINED_DIR = Path(__file__).resolve().parent.parent / "pretrained" / "staria_small"
NEG_INF = float("-inf")
FREE, NEEDS_ONSET, NEEDS_DURATION = range(3)
REPEAT_MODES = ("copy", "free")
MIN_SECTION_TOKENS = 16  # the smallest token budget of a section (about five notes)


@dataclass
class GenerationConfig:
    """Sampling and form-plan settings for one call."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = 0.95
    min_p: float | None = None
    cfg_scale: float = 1.0
    max_tokens: int = 1024
    section_tokens: int | None = None  # budget per section; default: what fits in max_tokens
    min_fraction: float = 0.7
    max_fraction: float = 1.3
    snippet_len: int = 256
    repeat: str = "copy"  # "copy": a repeated letter replays its first occurrence; "free": the model writes it
    max_chord: int = 8  # notes that may start at one onset
    seed: int | None = None

    def sampling(self) -> SamplingConfig:
        """The token-level sampling settings."""
        return SamplingConfig(self.temperature, self.top_k, self.top_p, self.min_p)


@dataclass
class _Row:
    """Decoding state of one piece of the batch."""

    plan: str
    budget: int
    tokens: list[int]
    onset_floor: int  # lowest onset id allowed in the current 5 s segment
    limit: int  # length at which the remaining section tokens and <E> are forced
    grammar: int = FREE
    section: int = 0
    in_section: int = 0
    lengths: list[int] = field(default_factory=list)  # tokens each finished section took
    melodic: bool = False  # the last note token was melodic (its onset is followed by a duration)
    done: bool = False
    pending: int = -1  # instrument-pitch key of the note waiting for its onset
    chord: list[int] = field(default_factory=list)  # keys of the notes starting at onset_floor
    replay: list[int] = field(default_factory=list)  # tokens still to feed of a replayed repeat
    replayed: bool = False  # a replayed repeat has been fed in full: its section ends now

    def section_budget(self) -> int:
        """This section's budget: a repeated letter takes as long as its first occurrence did."""
        first = self.plan.index(self.plan[self.section])
        return self.lengths[first] if first < self.section else self.budget


def min_max_tokens(form: str, head: int = 3, max_fraction: float = 1.3) -> int:
    """The fewest `max_tokens` that leave every section of `form` MIN_SECTION_TOKENS of budget, after a
    head of `head` tokens (instrument prefix, <S>, first section token: 3 for one instrument)."""
    return head + len(form) + math.ceil(MIN_SECTION_TOKENS * len(form) * max_fraction)


class StariaGenerator:
    """A trained Staria encoder-decoder with its tokenizer and the form-following sampler."""

    def __init__(self, model: StariaSeq2Seq, tokenizer: StariaTokenizer | None = None) -> None:
        self.model = model.eval()
        self.tok = tokenizer or StariaTokenizer()
        # Projection weights in float16 or float32, whichever this CPU multiplies faster (logits within 1e-2
        # of float32 in float16, tested): ~1.3x faster steps on one CPU, 2.5x slower on another.
        dim = model.cfg.dim
        self.decoder = CachedDecoder(model, weight_dtype=fastest_weight_dtype(3 * dim, dim))
        self.kinds = torch.as_tensor(self.tok.kinds(np.arange(self.tok.vocab_size)))
        features = self.tok.note_features()
        self.note_key = (features[:, 2] * 1000 + features[:, 0]).tolist()  # instrument and pitch of a note id
        self.note_keys = torch.as_tensor(self.note_key)  # the same, to mask candidates (the list is faster per token)
        self.onsets = slice(*self.tok.onset_range)
        self.durations = slice(*self.tok.duration_range)

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None) -> "StariaGenerator":
        """Load a generator exported by `cadenza music train staria` (None = the shipped small model)."""
        model, _ = load_model(Path(path) if path is not None else PRETRAINED_DIR, StariaConfig, StariaSeq2Seq)
        return cls(model)

    def prompt(self, form: str, snippets: dict[str, np.ndarray], snippet_len: int = 256) -> np.ndarray:
        """Encoder prompt for `form` from token ids per letter (a section, or a piece: see `prompt.py`)."""
        letters = dict.fromkeys(validate_form(form))
        return encoder_prompt(self.tok, {letter: snippets[letter] for letter in letters}, snippet_len, form)

    def snippets(self, form: str, prompt: MidiInput | None, seed: int) -> dict[str, np.ndarray]:
        """Token ids per letter of `form`: a prompt's marked sections ("A", "B", ... markers), its opening
        for "A" when it has no markers, and random folk tunes of the music21 corpus for the rest."""
        found = prompt_snippets(self.tok, prompt) if prompt is not None else {}
        missing = [letter for letter in dict.fromkeys(form) if letter not in found]
        if missing:
            with tempfile.TemporaryDirectory() as tmp:
                tunes = random_folk_tunes(len(missing), seed, tmp)
                for letter, path in zip(missing, tunes):
                    found[letter] = self.tok.tokenize_ids(path)
        return found

    def generate(self, form: str, prompt: MidiInput | None = None, num: int = 1,
                 config: GenerationConfig | None = None) -> list[Score]:
        """`num` pieces in `form` (a key of FORM_LABEL_MAP), each a Score with section markers.

        Without a prompt every piece gets its own snippets from the music21 corpus; with one, all pieces
        share the prompt's sections (and differ by sampling).
        """
        cfg = config or GenerationConfig()
        seed = cfg.seed if cfg.seed is not None else int(np.random.default_rng().integers(2**31))
        prompts = []
        for k in range(num):
            snippets = self.snippets(form, prompt, seed + 1000 * k)
            prompts.append(self.prompt(form, snippets, cfg.snippet_len))
        pieces = self.generate_ids(form, prompts, replace(cfg, seed=seed))
        return [self.tok.detokenize(ids) for ids in pieces]

    @torch.inference_mode()
    def nll(self, ids: np.ndarray, form: str = "A") -> tuple[float, int]:
        """(summed negative log-likelihood, number of tokens) of a piece's tokens after `<S>` (its first
        `max_seq_len` tokens) under the unconditional prompt `<PROMPT_START> <FORM>` of classifier-free
        guidance: how well the model predicts real music it is given no snippets of."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)[:self.model.cfg.max_seq_len])[None]
        prompt = torch.as_tensor(unconditional_prompt(self.tok, validate_form(form)))[None]
        logits = self.model(prompt, torch.ones_like(prompt, dtype=torch.bool), ids[:, :-1])
        first = int(np.flatnonzero(ids[0].numpy() == self.tok.bos_id)[0]) if (ids == self.tok.bos_id).any() else 0
        nll = torch.nn.functional.cross_entropy(logits[0, first:], ids[0, first + 1:], reduction="sum")
        return float(nll), int(ids.shape[1] - first - 1)

    @torch.inference_mode()
    def generate_ids(self, form: str, prompts: list[np.ndarray], cfg: GenerationConfig) -> list[np.ndarray]:
        """Token ids of one piece per prompt, each following `form`."""
        validate_form(form)
        if cfg.repeat not in REPEAT_MODES:
            raise ValueError(f"unknown repeat mode {cfg.repeat!r}; known: {', '.join(REPEAT_MODES)}")
        tok, batch, guided = self.tok, len(prompts), cfg.cfg_scale != 1.0
        heads = [tok.instrument_prefix(p) + [tok.bos_id, tok.section_token_id(form[0])] for p in prompts]
        width = max(len(h) for h in heads)
        shortest = min_max_tokens(form, width, cfg.max_fraction)
        if cfg.section_tokens is None and cfg.max_tokens < shortest:
            raise ValueError(f"max_tokens {cfg.max_tokens} is too few for form {form}: give at least {shortest} "
                             f"({MIN_SECTION_TOKENS} per section)")
        generator = make_generator(cfg.seed)
        prompt_batch = pad_sequence([torch.as_tensor(p) for p in prompts], batch_first=True, padding_value=tok.pad_id)
        prompt_mask = prompt_batch != tok.pad_id
        if guided:
            uncond_mask = prompt_mask.clone()
            uncond_mask[:, UNCONDITIONAL_LEN:] = False
            prompt_batch, prompt_mask = torch.cat([prompt_batch, prompt_batch]), torch.cat([prompt_mask, uncond_mask])
        state = self.decoder.start(self.model.encode(prompt_batch, prompt_mask), prompt_mask, cfg.max_tokens + 64,
                                   prompt_batch)
        # Budgets such that every section may run to max_fraction and the piece still fits max_tokens.
        budget = cfg.section_tokens or int((cfg.max_tokens - width - len(form)) / (len(form) * cfg.max_fraction))
        # Rows with fewer instruments repeat their first prefix token so that the batch starts aligned.
        padding = [width - len(h) for h in heads]
        heads = [[h[0]] * pad + h for h, pad in zip(heads, padding)]
        limit = cfg.max_tokens - len(form)
        rows = [_Row(form, budget, list(h), self.onsets.start, limit) for h in heads]
        candidates = self._candidates(heads)
        weights = {state: self.decoder.to_logits[ids] for state, ids in candidates.items()}
        biases = self._bias_tables(candidates)
        feed = torch.tensor(heads)
        for _ in range(cfg.max_tokens + 2):  # + 2: a note started at the limit still gets its onset and duration
            hidden = self.decoder.hidden(torch.cat([feed, feed]) if guided else feed, state)
            picked = self._sample(hidden, rows, cfg, batch, candidates, weights, biases, generator)
            for row, token in zip(rows, picked):
                if row.replay:
                    token = row.replay.pop(0)
                    row.replayed = not row.replay
                if token is not None:
                    self._advance(row, token, cfg)
            if all(row.done for row in rows):
                break
            feed = torch.tensor([[row.tokens[-1] if not row.done else tok.pad_id] for row in rows])
        return [np.asarray(row.tokens[pad:], dtype=np.int64) for row, pad in zip(rows, padding)]

    def _candidates(self, heads: list[list[int]]) -> dict[int, torch.Tensor]:
        """Ids each grammar state may pick from. Free steps: notes of the instruments the pieces declare in
        their prefix (Aria's meaning of prefix tokens), drums if declared, <T>, section tokens and <E>;
        so only those rows of the output layer are ever computed (~1.6k of 25.7k for a piano piece)."""
        tok = self.tok
        prefix_ids = {t for head in heads for t in head if tok.vocab[t][0:1] == ("prefix",)}
        declared = {tok.vocab[t][2] for t in prefix_ids}
        free = [i for i, t in enumerate(tok.vocab)
                if isinstance(t, tuple) and ((t[0] in declared and len(t) == 3) or (t[0] == "drum" and "drum" in declared))]
        free += [tok.time_id, *tok.section_ids.tolist(), tok.eos_id]
        return {FREE: torch.tensor(sorted(free)), NEEDS_ONSET: torch.arange(self.onsets.start, self.onsets.stop),
                NEEDS_DURATION: torch.arange(self.durations.start, self.durations.stop)}

    def _bias_tables(self, candidates: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Additive masks over each state's candidate ids, one row per situation (see `_bias_row`), built
        once per call so that a decoding step only looks rows up.

        NEEDS_ONSET: row f allows onsets from the f-th on (the onset floor). FREE: row 0 blocks section
        tokens and <E>, row 1 allows only <T> (no onset left in the segment), row 2 + k also allows the
        k-th boundary (section tokens A.., then <E>). NEEDS_DURATION: no mask."""
        onsets = candidates[NEEDS_ONSET]
        onset_table = torch.full((len(onsets) + 1, len(onsets)), NEG_INF).tril(-1)
        free = candidates[FREE]
        boundaries = [*self.tok.section_ids.tolist(), self.tok.eos_id]
        base = torch.where(torch.isin(free, torch.tensor(boundaries)), NEG_INF, 0.0)
        time_only = torch.where(free == self.tok.time_id, 0.0, NEG_INF)
        rows = [base, time_only]
        for boundary in boundaries:
            rows.append(base.masked_fill(free == boundary, 0.0))
        return {NEEDS_ONSET: onset_table, FREE: torch.stack(rows)}

    def _bias_row(self, row: _Row, cfg: GenerationConfig) -> int:
        """Which row of its state's bias table applies to a piece now (see `_bias_tables`)."""
        if row.grammar == NEEDS_ONSET:
            floor = row.onset_floor
            if row.pending in row.chord and floor + 1 < self.onsets.stop:
                floor += 1  # this note already starts at the floor: it goes later
            return floor - self.onsets.start
        if row.onset_floor >= self.onsets.stop:  # no onset left in this segment: time must move on
            return 1
        if row.in_section >= cfg.min_fraction * row.section_budget():
            nxt = row.section + 1
            return 2 + (SECTION_LETTERS.index(row.plan[nxt]) if nxt < len(row.plan) else len(SECTION_LETTERS))
        return 0

    def _sample(self, hidden: torch.Tensor, rows: list[_Row], cfg: GenerationConfig, batch: int,
                candidates: dict[int, torch.Tensor], weights: dict[int, torch.Tensor],
                biases: dict[int, torch.Tensor], generator: torch.Generator | None) -> list[int | None]:
        """One token per unfinished row under the grammar and the form plan (None for finished rows)."""
        picked: list[int | None] = [None] * len(rows)
        sampling = cfg.sampling()
        for state, ids in candidates.items():
            members = [i for i, row in enumerate(rows) if not row.done and not row.replay and row.grammar == state]
            if not members:
                continue
            index = torch.tensor(members)
            logits = F.linear(hidden[index], weights[state])
            if cfg.cfg_scale != 1.0:
                uncond = F.linear(hidden[index + batch], weights[state])
                logits = uncond + cfg.cfg_scale * (logits - uncond)
            if state in biases:
                logits = logits + biases[state][[self._bias_row(rows[i], cfg) for i in members]]
            if state == FREE:
                self._block_chord_at_last_onset(logits, [rows[i] for i in members], ids)
            for i, token in zip(members, ids[sample(logits, sampling, generator)].tolist()):
                picked[i] = self._forced(rows[i], cfg) or token
        return picked

    def _block_chord_at_last_onset(self, logits: torch.Tensor, rows: list[_Row], ids: torch.Tensor) -> None:
        """Mask (in place) the notes of a row's chord when it sits at the segment's last onset: such a note
        has no later onset to move to (see `_bias_row`), so picking it would start it twice."""
        last = self.onsets.stop - 1
        for j, row in enumerate(rows):
            if row.chord and row.onset_floor == last:
                logits[j, torch.isin(self.note_keys[ids], torch.tensor(row.chord))] = NEG_INF

    def _forced(self, row: _Row, cfg: GenerationConfig) -> int | None:
        """The planned section token (or <E>) once a section has used up its budget, at a note boundary."""
        if row.done or row.grammar != FREE:
            return None
        if row.replayed:
            return self._next_boundary(row)
        out_of_room = len(row.tokens) >= row.limit
        if out_of_room or row.in_section >= cfg.max_fraction * row.section_budget():
            return self._next_boundary(row)
        return None

    def _replay(self, row: _Row, occurrence: int) -> list[int]:
        """Tokens that play section `occurrence` of the row's piece again from the current time: its notes
        shifted to start at the onset floor, encoded, minus the header and the <T> tokens already passed.
        Cut at a note boundary so that the piece stays within its token limit."""
        events, _ = self.tok.ids_to_events(row.tokens)
        starts = np.flatnonzero(events.section >= 0)
        if occurrence >= len(starts):
            return []
        end = starts[occurrence + 1] if occurrence + 1 < len(starts) else len(events)
        notes = events.take(slice(int(starts[occurrence]), int(end)))
        if len(notes) == 0:
            return []
        segments = int(np.sum(np.asarray(row.tokens) == self.tok.time_id))
        now = segments * SEGMENT_MS + (row.onset_floor - self.onsets.start) * TIME_STEP_MS
        notes = notes.shifted(now - int(notes.onset_ms.min()))
        notes.section[:] = NO_SECTION
        ids = self.tok.events_to_ids(notes)
        body = ids[int(np.flatnonzero(ids == self.tok.bos_id)[0]) + 1:-1][segments:]
        room = row.limit - len(row.tokens)
        if len(body) > room:
            groups = np.flatnonzero(np.isin(self.tok.kinds(body), (K_NOTE, K_DRUM, K_TIME)))
            body = body[:int(groups[groups <= room].max(initial=0))]
        return body.tolist()

    def _next_boundary(self, row: _Row) -> int:
        nxt = row.section + 1
        return self.tok.section_token_id(row.plan[nxt]) if nxt < len(row.plan) else self.tok.eos_id

    def _advance(self, row: _Row, token: int, cfg: GenerationConfig) -> None:
        """Append a token and update the row's grammar, onset floor and place in the plan."""
        row.tokens.append(token)
        kind = int(self.kinds[token])
        if token == self.tok.eos_id:
            row.done = True
            return
        if kind == K_SECTION:
            row.lengths.append(row.in_section)
            row.section, row.in_section, row.replayed = row.section + 1, 0, False
            # A section opens at a time of its own: its first note comes strictly after the last onset.
            if len(row.tokens) > 2:
                row.onset_floor += 1
                row.chord = []
            first = row.plan.index(row.plan[row.section])
            if cfg.repeat == "copy" and first < row.section:
                row.replay = self._replay(row, first)
                row.replayed = not row.replay
            return
        row.in_section += 1
        previous = row.grammar
        if kind in (K_NOTE, K_DRUM):
            row.grammar = NEEDS_ONSET
            row.melodic = kind == K_NOTE
            row.pending = self.note_key[token]
        elif kind == K_ONSET:
            if token != row.onset_floor:
                row.chord = []
            row.chord.append(row.pending)
            row.onset_floor = token
            if len(row.chord) >= cfg.max_chord:  # a full chord: the next note starts later
                row.onset_floor, row.chord = token + 1, []
            row.grammar = NEEDS_DURATION if previous == NEEDS_ONSET and row.melodic else FREE
        else:
            row.grammar = FREE
            if kind == K_TIME:
                row.onset_floor, row.chord = self.onsets.start, []

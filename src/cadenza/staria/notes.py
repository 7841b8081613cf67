"""A note-level view of token ids, for models that should hear music as notes rather than tokens.

A Staria note is 2-3 tokens (note, onset, duration) in absolute time within 5 s segments: the same phrase
played later, transposed or louder gets different ids throughout. `NoteEmbedding` turns a batch of ids
into one vector per note built from what stays the same when a phrase comes back: pitch interval to the
previous note, time since the previous note onset, duration, plus pitch, velocity and instrument.
Sequences get ~3x shorter, which makes attention ~9x cheaper. `token_to_note` maps every token back
to a note (onset and duration tokens to their note; <T>, prefix and <S> tokens to the next note), so a
per-note prediction is read per token.
"""

from __future__ import annotations

import torch
from torch import nn

from cadenza.staria.events import SEGMENT_MS, TIME_STEP_MS
from cadenza.staria.tokenizer import K_DRUM, K_DUR, K_NOTE, K_ONSET, K_TIME, N_PITCH, N_VELOCITY, StariaTokenizer
from cadenza.staria.events import INSTRUMENTS

MAX_INTERVAL = 24  # semitones; larger leaps share the last bucket
TIME_BUCKETS = 64  # log-spaced buckets of 10 ms steps: 0 (together), then 4 per octave


def time_bucket(steps: torch.Tensor) -> torch.Tensor:
    """Bucket of a non-negative number of 10 ms steps: 0 stays 0, then 4 buckets per doubling."""
    return torch.clamp(torch.floor(4 * torch.log2(1 + steps.clamp(min=0).float())).long(), 0, TIME_BUCKETS - 1)


class NoteEmbedding(nn.Module):
    """Ids (batch, n) -> (note vectors (batch, notes, dim), note mask (batch, notes), token_to_note (batch, n))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        tok = StariaTokenizer()
        self.register_buffer("kinds", torch.as_tensor(tok.kinds(torch.arange(tok.vocab_size).numpy())).long(),
                             persistent=False)
        self.register_buffer("features", torch.as_tensor(tok.note_features()), persistent=False)
        self.onset_base, self.dur_base = tok.onset_range[0], tok.duration_range[0]
        self.pitch = nn.Embedding(1 + 2 * N_PITCH, dim)
        self.velocity = nn.Embedding(1 + N_VELOCITY, dim)
        self.instrument = nn.Embedding(1 + len(INSTRUMENTS), dim)
        self.interval = nn.Embedding(2 * MAX_INTERVAL + 2, dim)  # last index: no previous melodic note
        self.ioi = nn.Embedding(TIME_BUCKETS, dim)
        self.duration = nn.Embedding(TIME_BUCKETS + 1, dim)  # last index: a drum (no duration)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, n = ids.shape
        kind = torch.where(mask, self.kinds[ids], torch.full_like(ids, -1))
        starts = (kind == K_NOTE) | (kind == K_DRUM)
        count = starts.cumsum(dim=1)
        notes = int(count[:, -1].max().item()) if n else 0
        inside = starts | (kind == K_ONSET) | (kind == K_DUR)
        token_to_note = torch.where(inside, count - 1, count).clamp(0, max(notes - 1, 0))

        # The onset and duration of each note start sit 1 and 2 tokens after it.
        padded = torch.cat([ids, ids.new_zeros(batch, 2)], dim=1)
        onset_steps = padded[:, 1:n + 1] - self.onset_base
        segment = (kind == K_TIME).cumsum(dim=1)
        time = segment * (SEGMENT_MS // TIME_STEP_MS) + onset_steps  # absolute onset in 10 ms steps
        melodic = kind == K_NOTE
        dur_steps = padded[:, 2:n + 2] - self.dur_base + 1

        b, t = starts.nonzero(as_tuple=True)  # note starts, in order within each row
        slot = count[b, t] - 1
        note_mask = torch.zeros(batch, max(notes, 1), dtype=torch.bool, device=ids.device)
        note_mask[b, slot] = True
        feat = self.features[ids[b, t]]
        pitch = feat[:, 0]
        note_time = torch.zeros(batch, max(notes, 1), dtype=torch.long, device=ids.device)
        note_time[b, slot] = time[b, t]
        note_pitch = torch.full((batch, max(notes, 1)), -1, dtype=torch.long, device=ids.device)
        note_pitch[b, slot] = torch.where(melodic[b, t], pitch, torch.full_like(pitch, -1))
        # Previous note's onset and previous melodic pitch (for intervals), per slot.
        previous_time = torch.cat([note_time[:, :1], note_time[:, :-1]], dim=1)
        last_pitch = _carry_forward(note_pitch)
        previous_pitch = torch.cat([torch.full_like(last_pitch[:, :1], -1), last_pitch[:, :-1]], dim=1)
        interval = (note_pitch - previous_pitch).clamp(-MAX_INTERVAL, MAX_INTERVAL) + MAX_INTERVAL
        no_interval = (note_pitch < 0) | (previous_pitch < 0)
        interval = torch.where(no_interval, torch.full_like(interval, 2 * MAX_INTERVAL + 1), interval)
        ioi = time_bucket(note_time - previous_time)

        x = torch.zeros(batch, max(notes, 1), self.pitch.embedding_dim, device=ids.device)
        duration = torch.where(melodic[b, t], time_bucket(dur_steps[b, t]), torch.full_like(pitch, TIME_BUCKETS))
        x[b, slot] = (self.pitch(pitch) + self.velocity(feat[:, 1]) + self.instrument(feat[:, 2])
                      + self.duration(duration))
        x = x + self.interval(interval) + self.ioi(ioi)
        return x * note_mask.unsqueeze(-1), note_mask, token_to_note


def _carry_forward(values: torch.Tensor) -> torch.Tensor:
    """Each position's last non-negative value at or before it (-1 before the first)."""
    positions = torch.arange(values.shape[1], device=values.device).expand_as(values)
    last = torch.where(values >= 0, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    return torch.where(last >= 0, values.gather(1, last.clamp(min=0)), torch.full_like(values, -1))

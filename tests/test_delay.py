"""Delay pattern: build/revert round trip, streaming revert, and generation constraints."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cadenza.higgs_audio.delay import NO_EOS, DelayReverter, build_delay_pattern, delay_constraints, revert_delay_pattern
from cadenza.higgs_audio.sampler import BatchSampler

CODEBOOK_SIZE = 16
BOS, EOS = CODEBOOK_SIZE, CODEBOOK_SIZE + 1
SHAPES = [(n_q, T) for n_q in (1, 2, 8) for T in (1, 2, 5, 13)]


def _codes(n_q: int, T: int, seed: int = 0) -> torch.LongTensor:
    return torch.randint(0, CODEBOOK_SIZE, (n_q, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("n_q,T", SHAPES)
def test_build_rows_and_revert_round_trip(n_q: int, T: int) -> None:
    codes = _codes(n_q, T)
    delayed = build_delay_pattern(codes, BOS, EOS)
    assert delayed.shape == (n_q, T + n_q + 1)
    for k in range(n_q):
        expected = [BOS] * (k + 1) + codes[k].tolist() + [EOS] * (n_q - k)
        assert delayed[k].tolist() == expected
    assert torch.equal(revert_delay_pattern(delayed), codes)


def test_revert_clips_only_when_asked() -> None:
    delayed = build_delay_pattern(_codes(3, 4), BOS, EOS)
    delayed[1, 3] = EOS  # a stray special code inside the audio
    assert revert_delay_pattern(delayed)[1, 1] == EOS
    assert revert_delay_pattern(delayed, codebook_size=CODEBOOK_SIZE)[1, 1] == CODEBOOK_SIZE - 1


@pytest.mark.parametrize("n_q,T", SHAPES)
def test_incremental_revert_equals_revert(n_q: int, T: int) -> None:
    delayed = build_delay_pattern(_codes(n_q, T, seed=T), BOS, EOS)
    reverter = DelayReverter(n_q)
    outs = [reverter.push(delayed[:, c]) for c in range(delayed.shape[1])]
    assert all(out.shape[0] == n_q and out.shape[1] in (0, 1) for out in outs)
    # Frame t is complete at column t + n_q and released by the next push.
    released_at = [c for c, out in enumerate(outs) if out.shape[1] == 1]
    assert released_at == [t + n_q + 1 for t in range(T)]
    assert torch.equal(torch.cat(outs + [reverter.flush()], dim=1), revert_delay_pattern(delayed))
    # flush resets: the reverter takes the next stream from scratch.
    again = torch.cat([reverter.push(delayed[:, c]) for c in range(delayed.shape[1])], dim=1)
    assert torch.equal(again, revert_delay_pattern(delayed))


@pytest.mark.parametrize("n_q,T", SHAPES)
def test_eager_revert_releases_each_frame_a_column_sooner(n_q: int, T: int) -> None:
    """Eager: frame t comes with column t + n_q; not pushing the last column gives revert's frames exactly."""
    delayed = build_delay_pattern(_codes(n_q, T, seed=T), BOS, EOS)
    reverter = DelayReverter(n_q, eager=True)
    outs = [reverter.push(delayed[:, c]) for c in range(delayed.shape[1] - 1)]
    assert [c for c, out in enumerate(outs) if out.shape[1] == 1] == [t + n_q for t in range(T)]
    assert torch.equal(torch.cat(outs + [reverter.flush()], dim=1), revert_delay_pattern(delayed))
    cut = delayed[:, :n_q + 3]  # a stream cut off early: the same frames as revert_delay_pattern too
    outs = [reverter.push(cut[:, c]) for c in range(cut.shape[1] - 1)]
    assert torch.equal(torch.cat(outs + [reverter.flush()], dim=1), revert_delay_pattern(cut))


@pytest.mark.parametrize("n_q,T", SHAPES)
def test_constraints_match_built_pattern(n_q: int, T: int) -> None:
    delayed = build_delay_pattern(_codes(n_q, T), BOS, EOS)
    steps = np.arange(1, delayed.shape[1])
    force_bos, force_eos = delay_constraints(steps, np.where(steps >= T + 1, T + 1, NO_EOS), n_q)
    assert np.array_equal(force_bos, (delayed[:, 1:] == BOS).T.numpy())
    assert np.array_equal(force_eos, (delayed[:, 1:] == EOS).T.numpy())


@pytest.mark.parametrize("n_q", [1, 2, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sampling_under_constraints_reverts_to_valid_codes(n_q: int, seed: int) -> None:
    """The engine's sampler, fed random logits, writes a delay pattern that reverts to real codes."""
    gen = torch.Generator().manual_seed(seed)
    settings = SimpleNamespace(temperature=1.0, top_k=None, top_p=None, ras_win_len=0, ras_win_max_num_repeat=1)
    sampler = BatchSampler([settings], [torch.Generator().manual_seed(seed)], n_q, BOS, EOS)
    columns, stopped, step = [], False, 0
    while not stopped:
        logits = torch.randn(1, n_q, CODEBOOK_SIZE + 2, generator=gen) * 3
        logits[0, 0, EOS] += step / 4  # make codebook 0 end the audio sooner or later
        column, [(_, stopped)] = sampler.audio_columns([0], logits, every_row=True)
        columns.append(column[0])
        step += 1
    delayed = torch.stack(columns, dim=1)
    codes = revert_delay_pattern(delayed)
    assert codes.shape[1] >= 1 and bool(((codes >= 0) & (codes < CODEBOOK_SIZE)).all())
    assert torch.equal(build_delay_pattern(codes, BOS, EOS), delayed)

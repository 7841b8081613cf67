"""Token sampling: each filter keeps exactly the tokens it should, seeds reproduce, logits are not modified."""

import torch

from cadenza.core.sampling import SamplingConfig, make_generator, repetition_aware_sample, sample

LOGITS = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]))


def _picks(cfg: SamplingConfig, n: int = 400) -> set[tuple[int, int]]:
    generator = make_generator(0)
    return {tuple(sample(LOGITS, cfg, generator).tolist()) for _ in range(n)}


def _seen(picks: set[tuple[int, int]], row: int) -> set[int]:
    return {p[row] for p in picks}


def test_greedy_picks_the_best_token():
    assert sample(LOGITS, SamplingConfig(temperature=0)).tolist() == [0, 3]


def test_top_p_keeps_the_smallest_set_reaching_p():
    picks = _picks(SamplingConfig(top_p=0.7))  # 0.5 + 0.3 reach 0.7: the 0.15 and 0.05 tokens never come
    assert _seen(picks, 0) == {0, 1} and _seen(picks, 1) == {3, 2}


def test_top_p_always_keeps_the_best_token():
    assert _picks(SamplingConfig(top_p=0.01)) == {(0, 3)}


def test_top_k_and_min_p():
    assert _seen(_picks(SamplingConfig(top_k=3)), 0) == {0, 1, 2}
    assert _seen(_picks(SamplingConfig(min_p=0.5)), 0) == {0, 1}  # 0.15 < 0.5 * 0.5


def test_unfiltered_sampling_reaches_every_token_and_follows_probabilities():
    generator = make_generator(1)
    counts = torch.bincount(torch.stack([sample(LOGITS, SamplingConfig(), generator) for _ in range(4000)])[:, 0],
                            minlength=4).float() / 4000
    torch.testing.assert_close(counts, LOGITS[0].exp(), atol=0.03, rtol=0)


def test_seeded_sampling_is_reproducible_and_leaves_logits_alone():
    before = LOGITS.clone()
    runs = []
    for _ in range(2):
        generator = make_generator(7)
        runs.append([sample(LOGITS, SamplingConfig(top_p=0.9), generator).tolist() for _ in range(20)])
    assert runs[0] == runs[1]
    assert torch.equal(LOGITS, before)


def test_repetition_aware_sampling_resamples_a_stuck_token():
    cfg = SamplingConfig(temperature=0)
    history = torch.tensor([[0, 0, 0, 0], [1, 2, 1, 2]])
    picks = {tuple(repetition_aware_sample(LOGITS, history, cfg, window=4, max_repeats=3,
                                           generator=make_generator(s)).tolist()) for s in range(50)}
    assert {p[1] for p in picks} == {3}  # row 1 never repeated its pick: greedy stands
    assert len({p[0] for p in picks}) > 1  # row 0 repeated token 0 four times: resampled

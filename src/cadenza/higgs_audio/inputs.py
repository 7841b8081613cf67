"""Model inputs of a tokenized conversation: audio placeholders expanded to delayed code frames, labels shifted,
batches padded (right for training, left for generation prompts).

Every audio placeholder (`<|AUDIO|>` in system/user turns, `<|AUDIO_OUT|>` in assistant turns) becomes the
delay pattern of its codes, `T + n_q + 1` positions (`delay.build_delay_pattern`), flagged in `audio_mask`.
Labels come out already shifted (`labels[t]` is the target of position t's output, as `HiggsAudioModel`
expects): the text head learns the next text token, the audio head the next delayed frame of a labelled
`<|AUDIO_OUT|>`, stream-BOS fill excluded, the EOS staircase included (so the model learns to stop).
Alignment labels, for the model's guided-attention loss, say in frames of the trained audio where each token
of the transcript it speaks is spoken (`ChatMLDatasetSample.transcript_frames`) and which frame each trained
audio position predicts (codebook 0 of frame t at the t-th position of its delayed span). For a model with a
transcript pointer, every trained audio position also carries the transcript token spoken at the frame it
predicts (`spoken_ids`) and how many sounding tokens further the next position's token is (`pointer_labels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cadenza.higgs_audio.configuration import IGNORE_INDEX, HiggsAudioConfig
from cadenza.higgs_audio.delay import build_delay_pattern
from cadenza.higgs_audio.prompt import ChatMLDatasetSample


@dataclass
class ExpandedSample:
    """One conversation position by position (length L); labels shifted, -100 = no target."""

    input_ids: np.ndarray  # (L,) text ids; the placeholder id at audio positions
    audio_codes: np.ndarray  # (n_q, L) delayed codes at audio positions, 0 elsewhere
    audio_mask: np.ndarray  # (L,) bool
    text_labels: np.ndarray  # (L,)
    audio_labels: np.ndarray  # (n_q, L)
    # (2, L): row 0 the frame of the trained audio at which a transcript token is spoken, row 1 the frame a
    # trained audio position predicts; -1 elsewhere.
    alignment_labels: np.ndarray
    spoken_ids: np.ndarray  # (L,) transcript token spoken at the frame a trained audio position predicts; -1 elsewhere
    pointer_labels: np.ndarray  # (L,) steps from that token to the next position's, -100 where none

    def __len__(self) -> int:
        return len(self.input_ids)

    def positions(self, span: slice) -> ExpandedSample:
        """The positions `span` of this sample."""
        return ExpandedSample(self.input_ids[span], self.audio_codes[:, span], self.audio_mask[span],
                              self.text_labels[span], self.audio_labels[:, span], self.alignment_labels[:, span],
                              self.spoken_ids[span], self.pointer_labels[span])


def expand_sample(sample: ChatMLDatasetSample, config: HiggsAudioConfig) -> ExpandedSample:
    """Expand audio placeholders into delayed frames and shift the labels (see the module docstring)."""
    n_q, bos, eos = config.audio_num_codebooks, config.audio_stream_bos_id, config.audio_stream_eos_id
    placeholders = (config.audio_in_token_id, config.audio_out_token_id)
    ids, codes, mask, token_targets, frame_targets = [], [], [], [], []
    expanded_at, target = [], None  # expanded position of each token; span of the trained audio
    audio_iter = iter(sample.audio_codes)
    for token, label in zip(sample.input_ids, sample.label_ids):
        expanded_at.append(len(ids))
        if token not in placeholders:
            ids.append(token)
            codes.append(np.zeros((n_q, 1), np.int64))
            mask.append(np.zeros(1, bool))
            token_targets.append(label)
            frame_targets.append(np.full((n_q, 1), IGNORE_INDEX, np.int64))
            continue
        try:
            audio = next(audio_iter)
        except StopIteration:
            raise ValueError("sample has more audio placeholders than code arrays") from None
        delayed = build_delay_pattern(torch.as_tensor(np.asarray(audio[:n_q], np.int64)), bos, eos).numpy()
        width = delayed.shape[1]
        ids += [token] * width
        codes.append(delayed)
        mask.append(np.ones(width, bool))
        token_targets += [IGNORE_INDEX] * width
        learn = token == config.audio_out_token_id and label != IGNORE_INDEX
        if learn:
            target = (len(ids) - width, len(ids))
        frame_targets.append(np.where(delayed == bos, IGNORE_INDEX, delayed) if learn else np.full_like(delayed, IGNORE_INDEX))
    if next(audio_iter, None) is not None:
        raise ValueError("sample has more code arrays than audio placeholders")
    token_targets = np.asarray(token_targets, np.int64)
    frame_targets = np.concatenate(frame_targets, axis=1)
    text_labels = np.full_like(token_targets, IGNORE_INDEX)
    audio_labels = np.full_like(frame_targets, IGNORE_INDEX)
    text_labels[:-1], audio_labels[:, :-1] = token_targets[1:], frame_targets[:, 1:]
    alignment_labels = np.full((2, len(ids)), -1.0, np.float32)
    spoken_ids, pointer_labels = np.full(len(ids), -1, np.int64), np.full(len(ids), IGNORE_INDEX, np.int64)
    if sample.transcript_span is not None and target is not None:
        start, end = (expanded_at[i] for i in sample.transcript_span)
        frames, trained = np.asarray(sample.transcript_frames), slice(*target)
        alignment_labels[0, start:end] = frames
        alignment_labels[1, trained] = np.arange(target[1] - target[0])
        sounding = frames >= 0
        if sounding.any():
            pointer, steps = transcript_pointer(frames[sounding], target[1] - target[0], config.pointer_max_step)
            pointer_labels[trained] = steps
            spoken_ids[trained] = np.asarray(sample.input_ids[slice(*sample.transcript_span)])[sounding][pointer]
    return ExpandedSample(np.asarray(ids, np.int64), np.concatenate(codes, axis=1), np.concatenate(mask),
                          text_labels, audio_labels, alignment_labels, spoken_ids, pointer_labels)


def transcript_pointer(middles: np.ndarray, n_frames: int, max_step: int) -> tuple[np.ndarray, np.ndarray]:
    """For sounding tokens spoken around frames `middles` (increasing): the token spoken at each frame
    0..n_frames-1 (the one whose middle is nearest) and the steps from it to the next frame's (at most
    max_step; -100 at the last frame)."""
    pointer = np.searchsorted((middles[1:] + middles[:-1]) / 2, np.arange(n_frames), side="right")
    steps = np.full(n_frames, IGNORE_INDEX, np.int64)
    steps[:-1] = np.minimum(np.diff(pointer), max_step)
    return pointer, steps


def pad_inputs(expanded: list[ExpandedSample], config: HiggsAudioConfig, pad_left: bool = False,
               round_to: int = 8) -> dict[str, torch.Tensor]:
    """Pad expanded samples to one length (a multiple of `round_to`): tensors for `HiggsAudioModel.forward`."""
    longest = max(len(e) for e in expanded)
    length = -(-longest // round_to) * round_to
    n_q, batch = config.audio_num_codebooks, len(expanded)
    out = {
        "input_ids": torch.full((batch, length), config.pad_token_id, dtype=torch.long),
        "audio_codes": torch.zeros((batch, n_q, length), dtype=torch.long),
        "audio_mask": torch.zeros((batch, length), dtype=torch.bool),
        "attention_mask": torch.zeros((batch, length), dtype=torch.long),
        "text_labels": torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
        "audio_labels": torch.full((batch, n_q, length), IGNORE_INDEX, dtype=torch.long),
        "alignment_labels": torch.full((batch, 2, length), -1.0),
        "spoken_ids": torch.full((batch, length), -1, dtype=torch.long),
        "pointer_labels": torch.full((batch, length), IGNORE_INDEX, dtype=torch.long),
    }
    for row, e in enumerate(expanded):
        span = slice(length - len(e), length) if pad_left else slice(0, len(e))
        out["input_ids"][row, span] = torch.from_numpy(e.input_ids)
        out["audio_codes"][row, :, span] = torch.from_numpy(e.audio_codes)
        out["audio_mask"][row, span] = torch.from_numpy(e.audio_mask)
        out["attention_mask"][row, span] = 1
        out["text_labels"][row, span] = torch.from_numpy(e.text_labels)
        out["audio_labels"][row, :, span] = torch.from_numpy(e.audio_labels)
        out["alignment_labels"][row, :, span] = torch.from_numpy(e.alignment_labels)
        out["spoken_ids"][row, span] = torch.from_numpy(e.spoken_ids)
        out["pointer_labels"][row, span] = torch.from_numpy(e.pointer_labels)
    return out

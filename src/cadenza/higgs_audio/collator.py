"""The training batches' collate function: conversations -> padded model inputs (see inputs.py), each cut
to the model's training length from the left (a long conversation keeps its end, the trained audio)."""

from __future__ import annotations

import torch

from cadenza.higgs_audio.configuration import HiggsAudioConfig
from cadenza.higgs_audio.inputs import expand_sample, pad_inputs
from cadenza.higgs_audio.prompt import ChatMLDatasetSample


class HiggsAudioSampleCollator:
    """A batch of `ChatMLDatasetSample`s -> right-padded tensors for `HiggsAudioModel.forward`; samples longer
    than `max_len` keep their end."""

    def __init__(self, config: HiggsAudioConfig, max_len: int | None = None, round_to: int = 8):
        self.config, self.max_len, self.round_to = config, max_len, round_to

    def __call__(self, samples: list[ChatMLDatasetSample]) -> dict[str, torch.Tensor]:
        expanded = [expand_sample(s, self.config) for s in samples]
        if self.max_len is not None:
            expanded = [e.positions(slice(max(len(e) - self.max_len, 0), None)) for e in expanded]
        return pad_inputs(expanded, self.config, round_to=self.round_to)

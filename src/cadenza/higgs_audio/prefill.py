"""The prompt prefill of the serving engine: a batch's prompts into a new KV cache, their common prefix once.

Prompts of a batch often begin alike (the same voice reference, system message and history): their common
prefix is computed once and copied to every row, then only the rest is run batched. The part up to the end of
the last reference clip is also kept across calls, so a voice's next request starts from its reference
already read.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import torch

from cadenza.higgs_audio.inputs import ExpandedSample, pad_inputs
from cadenza.higgs_audio.modeling import HiggsAudioModel, KVCache

PREFIX_CACHE_SIZE = 8  # prompt prefixes up to their reference clips whose KV cache is kept


class PrefixSharingPrefill:
    """`prefill(expanded, longest)` for one model, with its cache of recent prompt prefixes."""

    def __init__(self, model: HiggsAudioModel, device: torch.device, min_shared_prefix: int = 64):
        self.model, self.config, self.device = model, model.config, device
        self.min_shared_prefix = min_shared_prefix  # a batch's prompts sharing fewer first positions run apart
        self.cache: OrderedDict[bytes, tuple[list, list]] = OrderedDict()  # prefixes' (keys, values), newest last

    def __call__(self, expanded: list[ExpandedSample], longest: int) -> tuple[KVCache, torch.Tensor, torch.Tensor, int]:
        """Run expanded prompts (`inputs.expand_sample`) through the model into a new KV cache with room for
        `longest` more positions: (cache, attention mask, last hidden states (B, D), shared prefix length)."""
        cfg = self.config
        reference = min(reference_end(e) for e in expanded)
        shared = common_prefix(expanded) if len(expanded) > 1 else reference
        if shared < self.min_shared_prefix:
            shared, rest = 0, expanded
        else:
            rest = [e.positions(slice(shared, None)) for e in expanded]
        batch = pad_inputs(rest, cfg, pad_left=True, round_to=1)
        suffix_mask = batch.pop("attention_mask").to(self.device)
        inputs = {k: v.to(self.device) for k, v in batch.items() if "labels" not in k}
        cache = KVCache(cfg, len(expanded), shared + suffix_mask.shape[1] + longest + 1, dtype=torch.float32,
                        device=self.device)
        if shared:
            prefix_cache = self._prefix_kv(expanded[0], min(reference, shared), shared, list(inputs))
            for keys, values, k, v in zip(cache.keys, cache.values, prefix_cache.keys, prefix_cache.values):
                keys[:, :, :shared] = k
                values[:, :, :shared] = v
            cache.length = shared
        ones = torch.ones(len(expanded), shared, dtype=suffix_mask.dtype, device=self.device)
        attention = torch.cat([ones, suffix_mask], dim=1)
        hidden = self.model(**inputs, attention_mask=attention, past_key_values=cache).hidden_states[:, -1]
        return cache, attention, hidden.float(), shared

    def _prefix_kv(self, prompt, kept: int, shared: int, input_names: list[str]) -> KVCache:
        """The KV cache (batch 1) of `prompt`'s first `shared` positions. The first `kept` of them come from
        the cache of recent prefixes when they were computed before, else are computed and stored there (at
        most PREFIX_CACHE_SIZE prefixes, least recently used dropped first)."""
        def run(span: slice) -> None:
            inputs = pad_inputs([prompt.positions(span)], self.config, pad_left=True, round_to=1)
            self.model(**{k: v.to(self.device) for k, v in inputs.items() if k in input_names}, past_key_values=cache)

        cache = KVCache(self.config, 1, shared, dtype=torch.float32, device=self.device)
        key = kept and hashlib.sha1(b"".join(np.ascontiguousarray(getattr(prompt, name)[..., :kept]).tobytes()
                                             for name in ("input_ids", "audio_codes", "audio_mask", "spoken_ids"))).digest()
        if key in self.cache:
            self.cache.move_to_end(key)
            for keys, values, k, v in zip(cache.keys, cache.values, *self.cache[key]):
                keys[:, :, :kept] = k
                values[:, :, :kept] = v
            cache.length = kept
        elif kept:
            run(slice(0, kept))
            self.cache[key] = ([k[:, :, :kept].clone() for k in cache.keys],
                               [v[:, :, :kept].clone() for v in cache.values])
            while len(self.cache) > PREFIX_CACHE_SIZE:
                self.cache.popitem(last=False)
        if shared > kept:
            run(slice(kept, shared))
        return cache


def common_prefix(expanded: list[ExpandedSample]) -> int:
    """Positions every prompt begins with, leaving each at least one of its own (0 for a single prompt)."""
    if len(expanded) < 2:
        return 0
    first, limit = expanded[0], min(len(e) for e in expanded) - 1
    same = np.ones(limit, dtype=bool)
    for e in expanded[1:]:
        same &= (e.input_ids[:limit] == first.input_ids[:limit]) & (e.audio_mask[:limit] == first.audio_mask[:limit])
        same &= (e.audio_codes[:, :limit] == first.audio_codes[:, :limit]).all(axis=0)
    return int(np.argmin(same)) if not same.all() else limit


def reference_end(prompt: ExpandedSample) -> int:
    """Positions of an expanded prompt up to the end of its last audio (a voice reference); 0 without audio."""
    audio = np.flatnonzero(prompt.audio_mask)
    return min(int(audio[-1]) + 1, len(prompt) - 1) if len(audio) else 0


__all__ = ["PrefixSharingPrefill", "PREFIX_CACHE_SIZE", "common_prefix", "reference_end"]

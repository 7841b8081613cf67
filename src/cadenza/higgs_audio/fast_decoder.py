"""Fast single-step decoding for a trained HiggsAudioModel.

`HiggsAudioModel.forward` is written for training and long prompts: per step it builds rotary tables and
an attention mask over the whole prefix, routes positions through index lists, and runs a Python module
call per norm and projection. One decoding step at a small batch is bound by that per-operation overhead
and by reading the weights, so `HiggsAudioDecoder` repacks the same weights once and runs a step with as
few tensor operations as possible (the ideas of `staria/fast_decoder.py`, helpers in `core/fast_decoder.py`):

- one projection per layer yields q, k and v, with the attention scale folded into q and the RMSNorm
  weight folded into the projection (norm(x) W^T = (x / rms(x)) (W diag(g))^T); likewise one
  projection yields the MLP's gate and up halves. The norm itself is x / sqrt(|x|^2 + D eps) (two
  operations, half the time of `F.rms_norm`), its factor sqrt(D) folded into the weights too;
- weights are kept transposed, (in, out), for `x @ W` (1.2-2x faster than `F.linear`'s x W^T on this
  kind of CPU), and the attention output and the MLP add themselves to the residual stream in their
  product (`addmm`);
- rotary positions are one roll and one multiply-add (signs folded into the sine table), looked up
  per row, so left-padded rows keep their own positions;
- grouped-query attention as batched products against the KV cache the prefill filled, with the query
  heads of one key/value head stacked as rows of one product (no repeated keys); padding keys are masked
  by a per-row additive bias built once from the prompt's attention mask;
- DualFFN routing by mode: a step where every row is an audio frame (the common case) or every row is a
  text token runs one weight set with no gather or scatter; only a mixed step splits rows;
- a prefix shared by every row (a batch of requests cloning one voice) is read once per step for the
  whole batch, as one product per key/value head (`start(..., shared=...)`, from 4 rows on), instead of
  once per row: at batch 16 with a 500-position voice prompt, re-reading it per row was most of a step.
  The rows' own positions after it are then kept head-major like the prefix's products, so both parts'
  scores meet in one softmax without transposing copies;
- optionally (`weight_dtype=torch.float16`, what the engine uses) half-precision weights: a step reads
  every weight once, mostly from memory rather than cache, so it is bound by the bytes read. Unlike
  Staria's decoder the products stay in float32: each matrix is widened into a float32 scratch buffer
  that fits in the L2 cache right before its product (the audio head one codebook at a time).
  Half-precision products measured ~17% faster still at batch 1, but on CPUs without float16
  arithmetic they fall back to a slow kernel at batch > 1 (2-5x slower than float32 at batch 16), and
  they would make a request's numbers, and so its sampled audio, depend on the batch it is in. The
  norms, attention and the KV cache stay in float32.

The prefill keeps using `HiggsAudioModel.forward` (efficient for long prompts); `start` takes its KV cache
and attention mask, and every `step` feeds one position per row into the same cache. Rows that have
finished may keep being fed (cheaper than compacting the batch): a row only ever reads its own cache row.
In float32 the logits match `HiggsAudioModel.forward` within 1e-4, with float16 weights within 1e-2
(tested), so this is a faster path through the same model, not a different model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cadenza.core.fast_decoder import PackedWeights, attend, rotate_half_tables
from cadenza.higgs_audio.modeling import HiggsAudioModel, KVCache, rotary_cos_sin


@dataclass
class _Layer:
    """One decoder layer's weights; `*_audio` are the `*_text` tensors themselves in a layer without DualFFN."""

    qkv_text: torch.Tensor  # (D, (H + 2 KV) * head_dim): input norm folded in, q scaled by 1/sqrt(head_dim)
    qkv_audio: torch.Tensor
    out: torch.Tensor  # (H * head_dim, D)
    up_text: torch.Tensor  # (D, 2 F): gate then up, post-attention norm folded in
    down_text: torch.Tensor  # (F, D)
    up_audio: torch.Tensor
    down_audio: torch.Tensor

    @property
    def dual(self) -> bool:
        return self.up_audio is not self.up_text


@dataclass
class DecodeState:
    """Per-batch decoding state: the shared KV cache, each row's next position, the padding bias."""

    cache: KVCache
    positions: torch.Tensor  # (B,) next rotary position of each row (its count of real positions so far)
    bias: torch.Tensor | None  # (rows of keys, 1, positions of keys): -inf at padding keys; None: no row is padded
    # Per layer, the keys and values every step reads and writes: the cache's, viewed as (B * KV, max_len,
    # head_dim) with row b * KV + j row b's head j; with a shared prefix, each row's own positions after it
    # (KV * B, max_len - shared, head_dim), head-major: row j * B + b is row b's head j.
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    shared: int = 0  # cache positions [0, shared) hold the same prefix in every row
    prefix_keys: list[torch.Tensor] | None = None  # per layer, that prefix's keys transposed (KV, head_dim, shared)
    prefix_values: list[torch.Tensor] | None = None  # (KV, shared, head_dim)


class HiggsAudioDecoder:
    """The weights of a HiggsAudioModel repacked for one-position-per-row decoding steps."""

    # Reading a shared prefix once costs a few more operations per layer: measured a loss at batch 2, a
    # gain from batch 4 on (20% at 4 rows, 2x at 16, with a 500-position prefix).
    shared_prefix_min_batch = 4

    def __init__(self, model: HiggsAudioModel, weight_dtype: torch.dtype = torch.float32) -> None:
        cfg = model.config
        self.config, self.weight_dtype = cfg, weight_dtype
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.group = self.n_heads // self.n_kv
        self.hidden_size = cfg.hidden_size
        self.n_q, self.stream_vocab = model.n_q, model.stream_vocab
        self.n_qk = (self.n_heads + self.n_kv) * self.head_dim  # q and k columns of the fused projection
        self.device = model.embed_tokens.weight.device
        # rms_norm(x) = x / sqrt(mean(x^2) + eps) = sqrt(D) x / hypot(|x|, sqrt(D eps)): see _norm
        self.norm_floor = torch.tensor((cfg.hidden_size * cfg.rms_norm_eps) ** 0.5, device=self.device)
        root = cfg.hidden_size ** 0.5
        # float16 weights widened into a float32 scratch buffer before each product, see PackedWeights
        self.weights = PackedWeights(weight_dtype, widen=True)
        self._project, pack = self.weights.project, self.weights.pack
        self.rotary: torch.Tensor | None = None
        with torch.no_grad():
            self.embed_tokens = model.embed_tokens.weight.detach().float()
            self.audio_embeddings = model.audio_codebook_embeddings.weight.detach().float()
            self.codebook_offsets = torch.arange(self.n_q, device=self.device) * self.stream_vocab
            self.final_norm = model.norm.weight.detach().float() * root
            self.text_head = pack(model.text_lm_head.weight)
            head = model.audio_lm_head.weight
            # Widened one codebook's rows at a time: those fit in the L2 cache, the whole head does not.
            chunks = [head] if weight_dtype == torch.float32 else head.split(self.stream_vocab)
            self.audio_head = [pack(w) for w in chunks]
            pointer = getattr(model, "pointer_head", None)
            self.pointer_head = pointer.weight.detach().float() if pointer is not None else None
            self.layers = [self._layer(layer, root) for layer in model.layers]

    def _layer(self, layer, root: float) -> _Layer:
        attn, pack = layer.self_attn, self.weights.pack
        q = attn.q_proj.weight.float() * self.head_dim ** -0.5
        qkv = torch.cat([q, attn.k_proj.weight.float(), attn.v_proj.weight.float()])

        def folded(weight: torch.Tensor, norm) -> torch.Tensor:
            return pack(weight.float() * (norm.weight.float() * root)[None, :])

        def up(mlp) -> torch.Tensor:
            return torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight])

        qkv_text = folded(qkv, layer.input_layernorm)
        up_text = folded(up(layer.mlp), layer.post_attention_layernorm)
        down_text = pack(layer.mlp.down_proj.weight)
        if layer.has_audio_ffn:
            qkv_audio = folded(qkv, layer.audio_input_layernorm)
            up_audio = folded(up(layer.audio_mlp), layer.audio_post_attention_layernorm)
            down_audio = pack(layer.audio_mlp.down_proj.weight)
        else:
            qkv_audio, up_audio, down_audio = qkv_text, up_text, down_text
        return _Layer(qkv_text, qkv_audio, pack(attn.o_proj.weight), up_text, down_text,
                      up_audio, down_audio)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        """rms_norm(x) / sqrt(D) (sqrt(D) is folded into the weights that follow)."""
        return x / torch.hypot(torch.linalg.vector_norm(x, dim=-1, keepdim=True), self.norm_floor)

    # ---- state ----------------------------------------------------------------------------------

    def start(self, cache: KVCache, attention_mask: torch.Tensor, shared: int = 0) -> DecodeState:
        """State for decoding after a prefill that filled `cache` under attention_mask (B, cache.length).

        shared: the first `shared` cache positions hold the same unpadded prefix in every row (a prompt
        shared by a batch, e.g. one voice reference): from `shared_prefix_min_batch` rows on, every step
        then reads that prefix's keys and values once for the whole batch, as one product per key/value
        head, instead of once per row.
        """
        batch, length = attention_mask.shape
        if length != cache.length:
            raise ValueError(f"attention_mask covers {length} positions but the KV cache holds {cache.length}")
        if cache.keys[0].dtype != torch.float32:
            raise ValueError(f"HiggsAudioDecoder needs a float32 KV cache, got {cache.keys[0].dtype}")
        real = attention_mask.bool()
        padding = None
        if not bool(real.all()):  # -inf at each row's padding positions
            padding = torch.zeros(batch, cache.max_len, device=self.device)
            padding[:, :length].masked_fill_(~real, float("-inf"))
        self._tables(cache.max_len)
        if shared > 0 and batch >= max(self.shared_prefix_min_batch, 2):
            if not bool(real[:, :shared].all()):
                raise ValueError(f"a shared prefix of {shared} positions must not be padded")

            def own(t: torch.Tensor) -> torch.Tensor:  # (B, KV, max_len, head_dim) -> head-major own positions
                out = t.new_empty(self.n_kv, batch, cache.max_len - shared, self.head_dim)
                out[:, :, :length - shared] = t[:, :, shared:length].transpose(0, 1)
                return out.view(self.n_kv * batch, -1, self.head_dim)

            bias = None if padding is None else padding[:, shared:].repeat(self.n_kv, 1)[:, None, :]
            keys, values = [own(k) for k in cache.keys], [own(v) for v in cache.values]
            return DecodeState(cache, real.sum(dim=1), bias, keys, values, shared,
                               [k[0, :, :shared].transpose(1, 2).contiguous() for k in cache.keys],
                               [v[0, :, :shared] for v in cache.values])
        bias = None if padding is None else padding.repeat_interleave(self.n_kv, dim=0)[:, None, :]
        keys = [k.view(batch * self.n_kv, cache.max_len, self.head_dim) for k in cache.keys]
        values = [v.view(batch * self.n_kv, cache.max_len, self.head_dim) for v in cache.values]
        return DecodeState(cache, real.sum(dim=1), bias, keys, values)

    def _tables(self, max_len: int) -> None:
        """Rotary (cos, signed sin) per position, stacked as (max_len, 2, head_dim), grown on demand."""
        if self.rotary is not None and self.rotary.shape[0] >= max_len:
            return
        cos, sin = rotary_cos_sin(torch.arange(max_len, device=self.device)[None], self.head_dim, self.config.rope_theta)
        cos, sin, _ = rotate_half_tables(cos[0], sin[0])  # the half rotation is a roll by head_dim / 2
        self.rotary = torch.stack([cos, sin], dim=1)

    # ---- step -----------------------------------------------------------------------------------

    @torch.inference_mode()
    def step(self, state: DecodeState, input_ids: torch.Tensor | None = None,
             audio_codes: torch.Tensor | None = None, audio_rows: torch.Tensor | None = None,
             spoken_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Feed one position per row; return the final-norm hidden states (B, D).

        All rows text: give input_ids (B,). All rows audio frames: give audio_codes (B, n_q). Mixed: give
        both and audio_rows (B,) bool (the text id at an audio row and the codes at a text row are ignored).
        spoken_ids (B,): for a model with a transcript pointer, the transcript token each row speaks (-1: none).
        """
        cache = state.cache
        if cache.length >= cache.max_len:
            raise ValueError(f"KV cache of max_len {cache.max_len} is full")
        if audio_codes is None:
            x, mode = F.embedding(input_ids, self.embed_tokens), "text"
        elif input_ids is None or audio_rows is None:
            x, mode = self._embed_audio(audio_codes), "audio"
        else:
            audio_col = audio_rows[:, None]
            text = F.embedding(input_ids.masked_fill(audio_rows, 0), self.embed_tokens)
            x = torch.where(audio_col, self._embed_audio(audio_codes.masked_fill(~audio_col, 0)), text)
            mode = "mixed"
            text_idx, audio_idx = (~audio_rows).nonzero().squeeze(1), audio_rows.nonzero().squeeze(1)

        if spoken_ids is not None and self.pointer_head is not None:
            x = x + F.embedding(spoken_ids.clamp(min=0), self.embed_tokens) * (spoken_ids >= 0)[:, None]
        batch = x.shape[0]
        end = cache.length + 1
        own = end - state.shared  # positions of state.keys to read, this step's included
        rotary = self.rotary[state.positions]  # (B, 2, head_dim)
        cos, sin = rotary[:, None, 0], rotary[:, None, 1]
        bias = state.bias[:, :, :own] if state.bias is not None else None
        for i, layer in enumerate(self.layers):
            h = self._norm(x)
            if mode == "mixed" and layer.dual:
                qkv = torch.where(audio_col, self._project(h, layer.qkv_audio), self._project(h, layer.qkv_text))
            else:
                qkv = self._project(h, layer.qkv_audio if mode == "audio" else layer.qkv_text)
            qk = qkv[:, :self.n_qk].view(batch, self.n_heads + self.n_kv, self.head_dim)
            qk = torch.addcmul(qk * cos, qk.roll(self.head_dim // 2, -1), sin)
            keys, values = state.keys[i], state.values[i]
            k, v = qk[:, self.n_heads:], qkv[:, self.n_qk:].view(batch, self.n_kv, self.head_dim)
            if state.shared:
                k, v = k.transpose(0, 1), v.transpose(0, 1)  # head-major, as state.keys
            keys.view(*k.shape[:2], -1, self.head_dim)[:, :, own - 1].copy_(k)
            values.view(*v.shape[:2], -1, self.head_dim)[:, :, own - 1].copy_(v)
            if state.shared:
                y = self._attend_shared(state, i, qk[:, :self.n_heads], own, bias)
            else:
                q = qk[:, :self.n_heads].reshape(batch * self.n_kv, self.group, self.head_dim)
                y = attend(q, keys[:, :own].transpose(1, 2), values[:, :own], bias)
            x = self._project(y.reshape(batch, -1), layer.out, x)
            h = self._norm(x)
            if mode == "mixed" and layer.dual:
                ffn = torch.empty_like(x)
                ffn[text_idx] = self._mlp(h[text_idx], layer.up_text, layer.down_text)
                ffn[audio_idx] = self._mlp(h[audio_idx], layer.up_audio, layer.down_audio)
                x = x + ffn
            elif mode == "audio":
                x = self._mlp(h, layer.up_audio, layer.down_audio, x)
            else:
                x = self._mlp(h, layer.up_text, layer.down_text, x)
        cache.length = end
        state.positions += 1
        return self._norm(x) * self.final_norm

    def _attend_shared(self, state: DecodeState, i: int, q: torch.Tensor, own: int,
                       bias: torch.Tensor | None) -> torch.Tensor:
        """Attention (B, KV, G, head_dim) of q (B, H, head_dim) over the shared prefix, as one product per
        key/value head for all rows, and over each row's `own` positions after it, in one softmax; head-major
        throughout, so that the two parts' scores and values line up with no copy but their concatenation."""
        kv, group, dim, shared = self.n_kv, self.group, self.head_dim, state.shared
        batch = q.shape[0]
        q = q.view(batch, kv, group, dim).transpose(0, 1).reshape(kv, batch * group, dim)
        prefix = torch.bmm(q, state.prefix_keys[i])  # (KV, B * G, shared)
        q, keys = q.view(kv * batch, group, dim), state.keys[i][:, :own].transpose(1, 2)
        mine = torch.bmm(q, keys) if bias is None else torch.baddbmm(bias, q, keys)  # (KV * B, G, own)
        scores = torch.cat([prefix.view(kv, batch, group, shared), mine.view(kv, batch, group, own)], dim=-1)
        scores = scores.softmax(dim=-1)
        y = torch.bmm(scores[..., :shared].flatten(1, 2), state.prefix_values[i]).view(kv * batch, group, dim)
        y.baddbmm_(scores[..., shared:].flatten(0, 1), state.values[i][:, :own])
        return y.view(kv, batch, group, dim).transpose(0, 1)

    def _embed_audio(self, codes: torch.Tensor) -> torch.Tensor:
        """A frame (B, n_q) embedded as the sum of its codebooks' embeddings (B, D)."""
        return F.embedding(codes + self.codebook_offsets, self.audio_embeddings).sum(dim=1)

    def _mlp(self, h: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
             residual: torch.Tensor | None = None) -> torch.Tensor:
        gate, value = self._project(h, up).chunk(2, dim=-1)
        return self._project(F.silu(gate) * value, down, residual)

    # ---- heads ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-text-token logits (B, text_vocab_size) from step hidden states (B, D)."""
        return self._project(hidden, self.text_head)

    @torch.inference_mode()
    def audio_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-frame logits (B, n_q, codebook_size + 2) from step hidden states (B, D)."""
        logits = [self._project(hidden, w) for w in self.audio_head]
        logits = logits[0] if len(logits) == 1 else torch.cat(logits, dim=-1)
        return logits.view(*hidden.shape[:-1], self.n_q, self.stream_vocab)

    @torch.inference_mode()
    def pointer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits (B, pointer_max_step + 1) of the transcript pointer's next step, from step hidden states (B, D)."""
        return F.linear(hidden, self.pointer_head)


__all__ = ["DecodeState", "HiggsAudioDecoder"]

"""HiggsAudioModel: a Llama-style decoder over text tokens and audio-code frames, with DualFFN layers.

Read top to bottom: rotary embeddings, attention (with a preallocated KV cache), the SwiGLU MLP, the
DualFFN decoder layer, then the model (embeddings, layers, heads, loss).

One position holds either a text token or an audio frame (all `audio_num_codebooks` codes of one
25 Hz step). An audio frame is embedded as the sum of its codes' embeddings; its hidden state goes
through the layer's audio norms and audio MLP (DualFFN), and the audio head predicts the next frame's
codes, one distribution per codebook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb
from transformers.utils import ModelOutput

from cadenza.higgs_audio.configuration import IGNORE_INDEX, HiggsAudioConfig

# Which rows of the flattened [B * L, hidden] stream are text and which are audio, computed once per
# forward and shared by every layer. None means "all text" (no audio position in the batch).
Routes = tuple[torch.Tensor, torch.Tensor] | None


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary cos/sin tables [B, L, head_dim] for the given positions, in float32."""
    # Computed per forward instead of held in a buffer: it costs L x head_dim multiplies, and a
    # non-persistent buffer would be left uninitialised when from_pretrained builds the model on "meta".
    inv_freq = theta ** -(torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim)
    freqs = position_ids[..., None].float() * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


class KVCache:
    """Preallocated keys/values [B, kv_heads, max_len, head_dim] per layer and the number of filled positions.

    Positions [0, length) are filled; a forward with L new positions writes [length, length + L) in every
    layer and then advances `length` by L.
    """

    def __init__(self, config: HiggsAudioConfig, batch_size: int, max_len: int,
                 dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> None:
        shape = (batch_size, config.num_key_value_heads, max_len, config.head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0

    def update(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a layer's new keys/values after the filled part; return all keys/values up to them."""
        end = self.length + key.shape[2]
        self.keys[layer][:, :, self.length:end] = key
        self.values[layer][:, :, self.length:end] = value
        # A cache kept in float32 while autocast computes in bfloat16: attention needs one dtype.
        return self.keys[layer][:, :, :end].to(key.dtype), self.values[layer][:, :, :end].to(value.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with rotary positions, through scaled_dot_product_attention."""

    def __init__(self, config: HiggsAudioConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                         config.head_dim)
        self.q_proj = nn.Linear(config.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, self.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, config.hidden_size, bias=False)
        self.guided_heads = config.guided_attention_heads if layer_idx in (config.guided_attention_layers or []) else 0
        self.guide_sigma = config.guided_attention_sigma

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None,
                cache: KVCache | None, alignment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from x [B, L, D] to the cache and x; `mask` None means plain causal attention. Returns the
        output and, on a guided layer given alignment labels [B, 2, L], its guided-attention loss."""
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = cos_sin
        q, k = apply_rotary_pos_emb(q, k, cos.to(q.dtype), sin.to(q.dtype))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           enable_gqa=self.n_heads != self.n_kv_heads)
        guide_loss = None
        if self.guided_heads and alignment is not None and cache is None:
            kv_head = torch.arange(self.guided_heads, device=x.device) // (self.n_heads // self.n_kv_heads)
            guide_loss = guided_attention_loss(q[:, :self.guided_heads], k[:, kv_head], mask, alignment, self.guide_sigma)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, -1)), guide_loss


def guided_attention_loss(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, alignment: torch.Tensor,
                          sigma: float) -> torch.Tensor:
    """Mean over trained audio queries of 1 - (attention mass on the transcript tokens spoken near the query's
    frame, weighted by a Gaussian of width sigma frames): 0 when a head reads what is being said.

    q, k [B, H, L, head_dim] of the guided heads (no cache); mask as in Attention; alignment [B, 2, L] from
    the collator (row 0 the frame of each transcript token, row 1 that of each audio query, -1 elsewhere).
    """
    L = q.shape[2]
    scores = (q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5  # [B, H, L, L]
    allowed = mask if mask is not None else torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
    probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
    text_place, audio_place = alignment[:, 0], alignment[:, 1]
    prior = torch.exp(-(audio_place[:, :, None] - text_place[:, None, :]) ** 2 / (2 * sigma**2))
    prior = prior * (text_place >= 0)[:, None, :]  # [B, L queries, L keys]
    covered = (probs * prior[:, None]).sum(-1)  # [B, H, L]
    queries = (audio_place >= 0)[:, None].expand_as(covered)
    return (1 - covered[queries]).mean() if bool(queries.any()) else covered.sum() * 0


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    # Written here rather than reusing LlamaMLP, which reads its width from config.intermediate_size
    # and so cannot build the audio MLP with its own width.
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the feed-forward to x [..., hidden]."""
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def _route(x: torch.Tensor, routes: tuple[torch.Tensor, torch.Tensor],
           text_fn: Callable[[torch.Tensor], torch.Tensor],
           audio_fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run text_fn on the text rows of x [B, L, D] and audio_fn on its audio rows only."""
    text_rows, audio_rows = routes
    flat = x.reshape(-1, x.shape[-1])
    # Both functions run even when their row set is empty: a zero-row matmul still gives every weight a
    # (zero) gradient, so DDP sees all parameters used and find_unused_parameters can stay False.
    text_out, audio_out = text_fn(flat[text_rows]), audio_fn(flat[audio_rows])
    out = text_out.new_empty(flat.shape[0], text_out.shape[-1])
    out = out.index_copy(0, text_rows, text_out).index_copy(0, audio_rows, audio_out.to(out.dtype))
    return out.view(*x.shape[:-1], -1)


class DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm Llama block whose norms and MLP are duplicated for audio positions (DualFFN).

    Attention is shared: text and audio positions attend to each other in one sequence. Only the
    per-position parts (the two norms and the MLP) are split, routed by index, so a layer costs the
    same FLOPs per position as a plain Llama layer.
    """

    def __init__(self, config: HiggsAudioConfig, layer_idx: int) -> None:
        super().__init__()
        self.self_attn = Attention(config, layer_idx)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size)
        self.dropout = nn.Dropout(config.dropout)
        self.has_audio_ffn = layer_idx in config.audio_dual_ffn_layers
        if self.has_audio_ffn:
            self.audio_input_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.audio_post_attention_layernorm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.audio_mlp = MLP(config.hidden_size, config.audio_intermediate_size)

    def forward(self, x: torch.Tensor, *, routes: Routes, cos_sin: tuple[torch.Tensor, torch.Tensor],
                mask: torch.Tensor | None, past_key_values: KVCache | None = None,
                alignment: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Transform x [B, L, D]; also return the guided-attention loss (see Attention.forward).
        `past_key_values` is named so gradient checkpointing knows to drop it."""
        dual = routes is not None and self.has_audio_ffn
        h = _route(x, routes, self.input_layernorm, self.audio_input_layernorm) if dual else self.input_layernorm(x)
        attended, guide_loss = self.self_attn(h, cos_sin, mask, past_key_values, alignment)
        x = x + self.dropout(attended)
        ffn = _route(x, routes, self._text_ffn, self._audio_ffn) if dual else self._text_ffn(x)
        return x + self.dropout(ffn), guide_loss

    def _text_ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.post_attention_layernorm(x))

    def _audio_ffn(self, x: torch.Tensor) -> torch.Tensor:
        return self.audio_mlp(self.audio_post_attention_layernorm(x))


def _is_right_padded(attention_mask: torch.Tensor) -> bool:
    """True when every row is ones then zeros (no padding before a real position)."""
    m = attention_mask.bool()
    return bool((m[:, 1:] <= m[:, :-1]).all())


@dataclass
class HiggsAudioOutput(ModelOutput):
    """What HiggsAudioModel.forward returns; the losses are None when no labels were given."""

    loss: torch.Tensor | None = None
    text_loss: torch.Tensor | None = None
    audio_loss: torch.Tensor | None = None
    alignment_loss: torch.Tensor | None = None  # mean guided-attention loss of the guided layers
    pointer_loss: torch.Tensor | None = None  # transcript pointer cross-entropy (config.transcript_pointer)
    audio_codebook_losses: torch.Tensor | None = None  # [n_q] unweighted mean cross-entropy per codebook
    hidden_states: torch.Tensor | None = None  # [B, L, hidden], after the final norm
    past_key_values: KVCache | None = None


class HiggsAudioModel(PreTrainedModel):
    """Decoder over interleaved text tokens and audio frames, with a text head and an audio head.

    Loss: text cross-entropy averaged over labelled positions, plus audio cross-entropy averaged over
    labelled (position, codebook) entries. The audio term is thus the mean of the per-codebook losses,
    1/n_q of the reference's sum over 8 codebooks: the same gradient direction, with a scale that
    stays comparable to the text term whatever n_q is.

    DDP: every parameter receives a gradient on every step, with find_unused_parameters=False, as long
    as forward gets audio_mask and audio_codes (even with no True entry) and both label tensors (even all
    -100): empty routes and empty loss terms still run their modules on zero rows.
    """

    config_class = HiggsAudioConfig
    base_model_prefix = "higgs_audio"
    supports_gradient_checkpointing = True

    def __init__(self, config: HiggsAudioConfig) -> None:
        super().__init__(config)
        self.n_q, self.stream_vocab = config.audio_num_codebooks, config.audio_codebook_size + 2
        self.embed_tokens = nn.Embedding(config.text_vocab_size, config.hidden_size)
        self.audio_codebook_embeddings = nn.Embedding(self.n_q * self.stream_vocab, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.text_lm_head = nn.Linear(config.hidden_size, config.text_vocab_size, bias=False)
        self.audio_lm_head = nn.Linear(config.hidden_size, self.n_q * self.stream_vocab, bias=False)
        if config.transcript_pointer:
            self.pointer_head = nn.Linear(config.hidden_size, config.pointer_max_step + 1, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Normal(0, initializer_range) weights, zero biases, unit norms."""
        # transformers.initialization (not torch.nn.init) skips tensors already loaded by from_pretrained.
        if isinstance(module, (nn.Linear, nn.Embedding)):
            init.normal_(module.weight, mean=0.0, std=self.config.initializer_range)
            if getattr(module, "bias", None) is not None:
                init.zeros_(module.bias)
        elif isinstance(module, LlamaRMSNorm):
            init.ones_(module.weight)

    def embed_audio_frames(self, codes: torch.LongTensor) -> torch.Tensor:
        """Embed audio frames codes [..., n_q] as the sum of their codebooks' embeddings -> [..., hidden]."""
        offsets = torch.arange(self.n_q, device=codes.device) * self.stream_vocab
        return self.audio_codebook_embeddings(codes + offsets).sum(dim=-2)

    def text_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-text-token logits [..., text_vocab_size] from final hidden states [..., hidden]."""
        return self.text_lm_head(hidden)

    def audio_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Next-frame logits [..., n_q, codebook_size + 2] from final hidden states [..., hidden]."""
        return self.audio_lm_head(hidden).view(*hidden.shape[:-1], self.n_q, self.stream_vocab)

    def forward(
        self,
        input_ids: torch.LongTensor,
        audio_codes: torch.LongTensor | None = None,
        audio_mask: torch.BoolTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: KVCache | None = None,
        text_labels: torch.LongTensor | None = None,
        audio_labels: torch.LongTensor | None = None,
        alignment_labels: torch.Tensor | None = None,
        spoken_ids: torch.LongTensor | None = None,
        pointer_labels: torch.LongTensor | None = None,
    ) -> HiggsAudioOutput:
        """Run the decoder on input_ids [B, L] (audio frames audio_codes [B, n_q, L] where audio_mask [B, L]).

        attention_mask [B, past + L] marks real positions (1) and padding (0); labels are already
        shifted (`text_labels[b, t]` is the target of the output at t), -100 = ignored. With a transcript
        pointer, spoken_ids [B, L] is the transcript token spoken at each audio position's frame (-1: none) and
        pointer_labels [B, L] the pointer's next step; both are ignored by a model without one.
        """
        B, L = input_ids.shape
        past = past_key_values.length if past_key_values is not None else 0
        if past_key_values is not None and past + L > past_key_values.max_len:
            raise ValueError(f"KV cache of max_len {past_key_values.max_len} cannot take {L} positions after {past}")
        if attention_mask is not None and attention_mask.shape != (B, past + L):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {(B, past + L)}")
        if audio_codes is None and audio_mask is not None and bool(audio_mask.any()):
            raise ValueError("audio_mask marks audio positions but no audio_codes were given")
        has_audio = audio_mask is not None and audio_codes is not None
        x = self._embed(input_ids, audio_codes, audio_mask) if has_audio else self.embed_tokens(input_ids)
        pointer = self.config.transcript_pointer
        if pointer and spoken_ids is not None:
            x = x + self.embed_tokens(spoken_ids.clamp(min=0)) * (spoken_ids >= 0)[..., None].to(x.dtype)

        if position_ids is None:
            if attention_mask is not None:  # left padding: count only real positions
                position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past:]
            else:
                position_ids = torch.arange(past, past + L, device=input_ids.device).expand(B, L)
        cos_sin = rotary_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        mask = self._attention_mask(attention_mask, past, L, input_ids.device)
        routes = self._routes(audio_mask) if has_audio else None

        guide_losses = []
        for layer in self.layers:
            x, guide_loss = layer(x, routes=routes, cos_sin=cos_sin, mask=mask, past_key_values=past_key_values,
                                  alignment=alignment_labels)
            if guide_loss is not None:
                guide_losses.append(guide_loss)
        if past_key_values is not None:
            past_key_values.length += L
        hidden = self.norm(x)

        text_loss = self._head_loss(self.text_logits, hidden, text_labels) if text_labels is not None else None
        audio_loss, codebook_losses = self._audio_loss(hidden, audio_labels) if audio_labels is not None else (None, None)
        alignment_loss = torch.stack(guide_losses).mean() if guide_losses else None
        pointer_loss = (self._head_loss(self.pointer_head, hidden, pointer_labels)
                        if pointer and pointer_labels is not None else None)
        losses = [loss for loss in (text_loss, audio_loss) if loss is not None]
        if alignment_loss is not None:
            losses.append(self.config.guided_attention_weight * alignment_loss)
        if pointer_loss is not None:
            losses.append(self.config.pointer_loss_weight * pointer_loss)
        return HiggsAudioOutput(loss=sum(losses) if losses else None, text_loss=text_loss, audio_loss=audio_loss,
                                alignment_loss=alignment_loss, pointer_loss=pointer_loss,
                                audio_codebook_losses=codebook_losses, hidden_states=hidden,
                                past_key_values=past_key_values)

    def _embed(self, input_ids: torch.LongTensor, audio_codes: torch.LongTensor,
               audio_mask: torch.BoolTensor) -> torch.Tensor:
        """Text embeddings, replaced by frame embeddings at audio positions."""
        # The text id at an audio position is a placeholder (maybe out of the vocabulary): embed id 0 there.
        x = self.embed_tokens(input_ids.masked_fill(audio_mask, 0))
        frames = self.embed_audio_frames(audio_codes.transpose(1, 2)[audio_mask])  # [N_audio, D]
        frames = F.dropout(frames, self.config.audio_input_dropout, self.training)
        return x.masked_scatter(audio_mask[..., None], frames.to(x.dtype))

    @staticmethod
    def _routes(audio_mask: torch.BoolTensor) -> Routes:
        """Flat indices of text and audio positions (computed once, shared by all layers)."""
        flat = audio_mask.reshape(-1)
        return (~flat).nonzero().squeeze(1), flat.nonzero().squeeze(1)

    @staticmethod
    def _attention_mask(attention_mask: torch.Tensor | None, past: int, L: int,
                        device: torch.device) -> torch.Tensor | None:
        """Boolean SDPA mask [B, 1, L, past + L] (True = may attend), or None for plain causal attention."""
        if past == 0 and (attention_mask is None or _is_right_padded(attention_mask)):
            # Padding only at the end cannot reach a real position through a causal mask, so the fast
            # is_causal path gives the same outputs at every real position.
            return None
        query_pos = torch.arange(past, past + L, device=device)[:, None]
        key_pos = torch.arange(past + L, device=device)[None, :]
        allowed = (key_pos <= query_pos)[None, None]
        if attention_mask is not None:
            allowed = allowed & attention_mask.bool()[:, None, None, :]
        # A left-padding query sees no real key. Torch's CPU kernels give such a row zeros, other backends
        # NaN (which then leaks into real positions through the values): let every query see itself.
        return allowed | (key_pos == query_pos)

    @staticmethod
    def _head_loss(head: Callable[[torch.Tensor], torch.Tensor], hidden: torch.Tensor,
                   labels: torch.LongTensor) -> torch.Tensor:
        """Mean cross-entropy of a head (text, pointer) over labelled positions, run only at those."""
        labelled = labels != IGNORE_INDEX
        logits = head(hidden[labelled]).float()
        return F.cross_entropy(logits, labels[labelled], reduction="sum") / labelled.sum().clamp(min=1)

    def _audio_loss(self, hidden: torch.Tensor, labels: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean cross-entropy over labelled (position, codebook) entries, weighted per codebook by
        `audio_codebook_loss_weights`, with the audio head run only where needed; and each codebook's
        unweighted mean (detached, for logs)."""
        labels = labels.transpose(1, 2)  # [B, L, n_q]
        positions = (labels != IGNORE_INDEX).any(-1)
        logits = self.audio_logits(hidden[positions]).float()  # [N, n_q, C]
        targets = labels[positions]
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none")
        loss, labelled = loss.view(targets.shape), targets != IGNORE_INDEX  # [N, n_q]
        per_codebook = (loss.sum(0) / labelled.sum(0).clamp(min=1)).detach()
        weights = labelled * torch.tensor(self.config.audio_codebook_loss_weights or [1.0] * self.n_q, device=loss.device)
        return (loss * weights).sum() / weights.sum().clamp(min=1e-6), per_codebook

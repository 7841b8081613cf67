"""LightningModules for the Staria models: what each model learns from a batch, and how it is scored.

- `ClassifierTask`: per-token section letters + form, on pieces without section tokens (the "sleep").
- `ContrastiveTask`: NT-Xent between two augmented views of snippets of the same piece.
- `GeneratorTask`: the encoder-decoder generator; loss on the whole piece, pads ignored, the prompt
  dropped for a fraction of samples so that classifier-free guidance has an unconditional model.
- `BaselineTask`: the decoder-only baseline (prompt and piece in one sequence, loss on the piece).

Loss on note attributes is computed over the only tokens the grammar allows there: after a note token
the next token is an onset, after a melodic onset a duration. Generation applies the same grammar, so
the model is trained on exactly the choices it makes, at a third of the output-layer cost.
"""

from __future__ import annotations

from dataclasses import asdict

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from cadenza.core.training import TrainConfig, configure_optimizers
from cadenza.staria.models import (
    DecoderOnlyBaseline, SectionClassifier, SnippetEncoder, StariaConfig, StariaSeq2Seq, nt_xent, token_loss,
)
from cadenza.staria.prompt import UNCONDITIONAL_LEN
from cadenza.staria.tokenizer import IGNORE_INDEX, K_DRUM, K_NOTE, K_ONSET, StariaTokenizer


class GrammarLoss:
    """Cross-entropy where the grammar fixes the kind of the next token (onset after a note, duration
    after a melodic onset): those positions are scored over that kind's ids only."""

    def __init__(self, tokenizer: StariaTokenizer) -> None:
        self.onsets = slice(*tokenizer.onset_range)
        self.durations = slice(*tokenizer.duration_range)
        self.kind_of = torch.as_tensor(tokenizer.kinds(np.arange(tokenizer.vocab_size)), dtype=torch.long)

    def position_kinds(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (batch, n): next token must be an onset / must be a duration."""
        kind = self.kind_of.to(inputs.device)[inputs.clamp(min=0)]
        wants_onset = (kind == K_NOTE) | (kind == K_DRUM)
        previous = F.pad(kind[:, :-1], (1, 0), value=-1)
        wants_duration = (kind == K_ONSET) & (previous == K_NOTE)
        return wants_onset, wants_duration

    def __call__(self, hidden: torch.Tensor, output_weight: torch.Tensor, inputs: torch.Tensor,
                 targets: torch.Tensor) -> torch.Tensor:
        """Mean loss over non-ignored targets; hidden (batch, n, dim), output_weight (vocab, dim)."""
        wants_onset, wants_duration = self.position_kinds(inputs)
        free = ~(wants_onset | wants_duration)
        total = hidden.new_zeros((), dtype=torch.float32)
        count = (targets != IGNORE_INDEX).sum().clamp(min=1)
        for mask, rows in ((free, slice(None)), (wants_onset, self.onsets), (wants_duration, self.durations)):
            picked = mask & (targets != IGNORE_INDEX)
            if not picked.any():
                continue
            offset = rows.start or 0
            logits = hidden[picked] @ output_weight[rows].T
            local = targets[picked] - offset
            valid = (local >= 0) & (local < logits.shape[-1])
            # A target outside the grammar's set (malformed data) falls back to the full vocabulary.
            total = total + F.cross_entropy(logits[valid].float(), local[valid], reduction="sum")
            if not valid.all():
                full = hidden[picked][~valid] @ output_weight.T
                total = total + F.cross_entropy(full.float(), targets[picked][~valid], reduction="sum")
        return total / count


class _Task(L.LightningModule):
    """Shared optimizer, schedule and train/val steps; each task defines `step(batch, stage) -> loss`."""

    def __init__(self, model_cfg: StariaConfig, train_cfg: TrainConfig) -> None:
        super().__init__()
        self.model_cfg, self.train_cfg = model_cfg, train_cfg
        self.save_hyperparameters({"model": asdict(model_cfg), "train": asdict(train_cfg)})

    def configure_optimizers(self):
        return configure_optimizers(self, self.train_cfg)

    def training_step(self, batch, batch_idx):
        return self.step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self.step(batch, "val")

    def _log(self, stage: str, values: dict[str, torch.Tensor], batch_size: int) -> None:
        for name, value in values.items():
            self.log(f"{stage}/{name}", value, prog_bar=name in ("loss", "token_acc"), batch_size=batch_size,
                     sync_dist=stage != "train")


class ClassifierTask(_Task):
    """Section classifier: per-token A-D labels and the form of the whole piece."""

    def __init__(self, model_cfg: StariaConfig, train_cfg: TrainConfig, form_weight: float = 0.2) -> None:
        super().__init__(model_cfg, train_cfg)
        self.model = SectionClassifier(model_cfg)
        self.form_weight = form_weight

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        section_logits, form_logits = self.model(batch["input_ids"], batch["attention_mask"])
        labels = batch["section_labels"]
        section_loss = token_loss(section_logits, labels)
        form_loss = F.cross_entropy(form_logits.float(), batch["form_label"], ignore_index=IGNORE_INDEX)
        loss = section_loss + self.form_weight * torch.nan_to_num(form_loss)
        known = labels != IGNORE_INDEX
        token_acc = (section_logits.argmax(-1)[known] == labels[known]).float().mean()
        has_form = batch["form_label"] != IGNORE_INDEX
        form_acc = (form_logits.argmax(-1)[has_form] == batch["form_label"][has_form]).float().mean()
        self._log(stage, {"loss": loss, "section_loss": section_loss, "token_acc": token_acc,
                          "form_acc": form_acc}, labels.shape[0])
        return loss


class ContrastiveTask(_Task):
    """Snippet encoder trained with NT-Xent between two views of the same piece."""

    def __init__(self, model_cfg: StariaConfig, train_cfg: TrainConfig, temperature: float = 0.1) -> None:
        super().__init__(model_cfg, train_cfg)
        self.model = SnippetEncoder(model_cfg)
        self.temperature = temperature

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        a = self.model(batch["view_a"], batch["mask_a"])
        b = self.model(batch["view_b"], batch["mask_b"])
        loss = nt_xent(a, b, self.temperature)
        retrieval = ((a @ b.T).argmax(-1) == torch.arange(len(a), device=a.device)).float().mean()
        self._log(stage, {"loss": loss, "retrieval_acc": retrieval}, a.shape[0])
        return loss


def drop_prompts(prompt_mask: torch.Tensor, probability: float, keep: int = UNCONDITIONAL_LEN) -> torch.Tensor:
    """Hide all but the first `keep` prompt tokens (<PROMPT_START> and the form token) for a random
    fraction of samples: the unconditional branch that classifier-free guidance subtracts."""
    if probability <= 0:
        return prompt_mask
    dropped = torch.rand(prompt_mask.shape[0], device=prompt_mask.device) < probability
    mask = prompt_mask.clone()
    mask[dropped, keep:] = False
    return mask


STAGES = ("all", "cross_attention", "top_decoder", "encoder")


def decoder_layer_groups(model: StariaSeq2Seq) -> list[list[int]]:
    """Indices into the decoder's `attn_layers.layers` of each decoder layer (self-attn, cross-attn, ff)."""
    groups: list[list[int]] = []
    for i, kind in enumerate(model.decoder.attn_layers.layer_types):
        if kind == "a" or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def apply_stage(model: StariaSeq2Seq, stage: str = "all", top_layers: int = 4) -> None:
    """Freeze the generator for a fine-tuning stage (sets requires_grad).

    `cross_attention`: only the cross-attention blocks with their norms and the decoder's final norm
    train; `top_decoder`: those and the top `top_layers` decoder layers; `encoder` and `all`: everything.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown task.stage {stage!r}; expected one of {', '.join(STAGES)}")
    full = stage in ("all", "encoder")
    for param in model.parameters():
        param.requires_grad = full
    if full:
        return
    attn_layers = model.decoder.attn_layers
    chosen = [i for i, kind in enumerate(attn_layers.layer_types) if kind == "c"]
    if stage == "top_decoder":
        if top_layers < 0:
            raise ValueError(f"task.top_layers must be >= 0, got {top_layers}")
        groups = decoder_layer_groups(model)
        chosen += [i for group in groups[len(groups) - min(top_layers, len(groups)):] for i in group]
    modules = [attn_layers.layers[i] for i in chosen]
    if getattr(attn_layers, "final_norm", None) is not None:
        modules.append(attn_layers.final_norm)
    for module in modules:
        for param in module.parameters():
            param.requires_grad = True


class GeneratorTask(_Task):
    """Encoder-decoder generator: the prompt (section snippets) in, the whole piece out.

    `stage` picks which weights train (staged fine-tuning, see `apply_stage`).
    """

    def __init__(self, model_cfg: StariaConfig, train_cfg: TrainConfig, prompt_dropout: float = 0.1,
                 stage: str = "all", top_layers: int = 4) -> None:
        super().__init__(model_cfg, train_cfg)
        self.model = StariaSeq2Seq(model_cfg)
        self.prompt_dropout = prompt_dropout
        self.finetune_stage, self.top_layers = stage, top_layers
        apply_stage(self.model, stage, top_layers)
        self.loss_fn = GrammarLoss(StariaTokenizer())

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        prompt_mask = batch["encoder_mask"]
        if stage == "train":
            prompt_mask = drop_prompts(prompt_mask, self.prompt_dropout)
        context = self.model.encode(batch["encoder_input"], prompt_mask)
        hidden = self.model.decode(batch["decoder_input"], batch["decoder_mask"], context, prompt_mask,
                                   batch["encoder_input"])
        loss = self.loss_fn(hidden, self.model.decoder.to_logits.weight, batch["decoder_input"], batch["target"])
        self._log(stage, {"loss": loss, "ppl": loss.detach().exp()}, hidden.shape[0])
        return loss


class BaselineTask(_Task):
    """Decoder-only baseline: [prompt | piece] in one sequence, loss on the piece only."""

    def __init__(self, model_cfg: StariaConfig, train_cfg: TrainConfig) -> None:
        super().__init__(model_cfg, train_cfg)
        self.model = DecoderOnlyBaseline(model_cfg)
        self.loss_fn = GrammarLoss(StariaTokenizer())

    def step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        prompt, piece = batch["encoder_input"], batch["decoder_input"]
        ids = torch.cat([prompt, piece], dim=1)
        mask = torch.cat([batch["encoder_mask"], batch["decoder_mask"]], dim=1)
        ignore = torch.full_like(prompt, IGNORE_INDEX)
        targets = torch.cat([ignore, batch["target"]], dim=1)
        decoder = self.model.decoder
        hidden = decoder(ids, mask=mask, return_embeddings=True)
        # x-transformers ties this model's output layer to its embedding with a fixed scale.
        output_weight = decoder.token_emb.emb.weight * decoder.tie_embedding_scale
        loss = self.loss_fn(hidden, output_weight, ids, targets)
        self._log(stage, {"loss": loss, "ppl": loss.detach().exp()}, ids.shape[0])
        return loss


TASKS = {"classifier": ClassifierTask, "encoder": ContrastiveTask, "decoder": BaselineTask,
         "staria": GeneratorTask}

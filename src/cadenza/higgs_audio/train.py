"""`cadenza speech train --config FILE key=value ...`: train or fine-tune the audio LM with Lightning.

A config has four sections: `model` (a preset name plus any HiggsAudioConfig field, or `init_from` an
exported model to fine-tune), `data` (the encoded speech corpus and the conversation mix), `finetune`
(what to freeze) and `train` (core.training.TrainConfig: precision, DDP/SLURM, checkpoints, resume).
The text tokenizer is built from the corpus' training transcripts on the first run and kept in the run
directory; the model and tokenizer are exported to `RUN_DIR/model` when training ends (`export` does it
for a running or stopped run).
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import lightning as L
import torch

from cadenza.core.checkpoint import CheckpointError, half_state_dict
from cadenza.core.config import load_config
from cadenza.core.data_loader import ResumableDataLoader
from cadenza.core.training import TrainConfig, configure_optimizers, fit, train_config
from cadenza.higgs_audio.codec.api import codec_fingerprint
from cadenza.higgs_audio.collator import HiggsAudioSampleCollator
from cadenza.higgs_audio.configuration import TOKENIZER_FILE, HiggsAudioConfig
from cadenza.higgs_audio.dataset import SampleMix, SpeechLMDataset, corpus_tokenizer
from cadenza.higgs_audio.modeling import HiggsAudioModel
from cadenza.higgs_audio.text import TextTokenizer

PRESETS = {"tiny": HiggsAudioConfig.tiny, "small": HiggsAudioConfig.small, "paper": HiggsAudioConfig.paper}
# Parameter-name prefixes of the audio adapter: the part `finetune.freeze_llm` leaves trainable.
AUDIO_ADAPTER = ("audio_codebook_embeddings", "audio_lm_head", "audio_input_layernorm",
                 "audio_post_attention_layernorm", "audio_mlp")


def default_config() -> dict[str, Any]:
    """Every key a config may set, with its default."""
    return {
        # overrides: any HiggsAudioConfig field; None keeps the preset's (or init_from's) value
        "model": {"preset": "small", "init_from": None, "overrides": dict.fromkeys(HiggsAudioConfig.__annotations__)},
        "data": {"corpus": "data/speech", "codec": None, "max_len": 1024, **asdict(SampleMix())},
        "finetune": {"freeze_llm": False, "freeze_text_head": False},
        "train": asdict(TrainConfig()),
    }


def token_ids(tokenizer: TextTokenizer) -> dict[str, int]:
    """The special-token ids a HiggsAudioConfig records, read off the tokenizer."""
    names = {"pad_token_id": "<|pad|>", "audio_in_token_id": "<|AUDIO|>", "audio_out_token_id": "<|AUDIO_OUT|>",
             "audio_bos_token_id": "<|audio_bos|>", "audio_eos_token_id": "<|audio_eos|>",
             "audio_out_bos_token_id": "<|audio_out_bos|>", "eot_token_id": "<|eot_id|>"}
    return {field: tokenizer.token_id(token) for field, token in names.items()}


def load_or_build_tokenizer(run_dir: Path, corpus: str | Path, init_from: str | Path | None = None) -> TextTokenizer:
    """The run's tokenizer; the first time, the fine-tuned model's (`init_from`) or one built from the
    corpus' training transcripts."""
    path = run_dir / TOKENIZER_FILE
    if path.is_file():
        return TextTokenizer.load(path)
    if init_from is not None:
        tokenizer = TextTokenizer.load(Path(init_from) / TOKENIZER_FILE)
    else:
        tokenizer = corpus_tokenizer(corpus)
    run_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(path)
    return tokenizer


def _plain(config: HiggsAudioConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}


def model_config(section: dict[str, Any], tokenizer: TextTokenizer) -> HiggsAudioConfig:
    """The preset (or `init_from`'s config) with the section's overrides and the tokenizer's ids."""
    if section["init_from"] is not None:
        base = HiggsAudioConfig.from_pretrained(section["init_from"]).to_dict()
    elif section["preset"] in PRESETS:
        base = PRESETS[section["preset"]]().to_dict()
    else:
        raise ValueError(f"unknown model preset {section['preset']!r}; expected one of {', '.join(PRESETS)}")
    base.update({k: v for k, v in (section["overrides"] or {}).items() if v is not None})
    base.update(token_ids(tokenizer), text_vocab_size=tokenizer.vocab_size)
    return HiggsAudioConfig(**{k: v for k, v in base.items() if k not in ("model_type", "transformers_version")})



class SpeechLMModule(L.LightningModule):
    """Text CE + per-codebook audio CE on conversations; optional freezing for adapter-only fine-tuning."""

    def __init__(self, config: dict[str, Any], train: dict[str, Any], init_from: str | None = None,
                 freeze_llm: bool = False, freeze_text_head: bool = False):
        super().__init__()
        self.save_hyperparameters()  # plain dicts, so a checkpoint rebuilds the module by itself
        self.train_cfg = train_config(train)
        config = HiggsAudioConfig(**config)
        # from_pretrained returns a model in eval mode; training starts in train mode either way
        self.model = (HiggsAudioModel.from_pretrained(init_from, config=config) if init_from else HiggsAudioModel(config)).train()
        freeze(self.model, freeze_llm, freeze_text_head)

    def forward(self, batch: dict[str, torch.Tensor]):
        return self.model(**batch)

    def on_train_epoch_start(self) -> None:
        self.trainer.train_dataloader.dataset.set_epoch(self.current_epoch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        self.log_dict(_losses(out, "train"), prog_bar=True, batch_size=len(batch["input_ids"]))
        return out.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(batch)
        self.log_dict(_losses(out, "val"), prog_bar=True, batch_size=len(batch["input_ids"]), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_optimizers(self.model, self.train_cfg)


def _losses(out, stage: str) -> dict[str, torch.Tensor]:
    """The output's losses as `stage/name`; in validation also each codebook's (`val/audio_loss_cb0`, ...)."""
    names = ("loss", "text_loss", "audio_loss", "alignment_loss", "pointer_loss")
    logged = {f"{stage}/{name}": getattr(out, name) for name in names if getattr(out, name) is not None}
    if stage == "val" and out.audio_codebook_losses is not None:
        logged.update({f"val/audio_loss_cb{k}": loss for k, loss in enumerate(out.audio_codebook_losses)})
    return logged


def freeze(model: HiggsAudioModel, freeze_llm: bool, freeze_text_head: bool) -> None:
    """`freeze_llm`: only the audio adapter (audio embeddings, DualFFN audio path, audio head) trains;
    `freeze_text_head`: the text LM head stays as it is."""
    for name, param in model.named_parameters():
        adapter = any(part in name for part in AUDIO_ADAPTER)
        if (freeze_llm and not adapter) or (freeze_text_head and "text_lm_head" in name):
            param.requires_grad_(False)


class SpeechDataModule(L.LightningDataModule):
    """Train conversations from the train split; validation from the val split (held-out speakers included)."""

    def __init__(self, data: dict[str, Any], tokenizer: TextTokenizer, config: HiggsAudioConfig, train_cfg: TrainConfig):
        super().__init__()
        self.data, self.tokenizer, self.train_cfg = data, tokenizer, train_cfg
        self.collator = HiggsAudioSampleCollator(config, max_len=data["max_len"])
        self.mix = SampleMix(**{f.name: data[f.name] for f in fields(SampleMix)})

    def setup(self, stage: str | None = None) -> None:
        corpus, codec, seed = self.data["corpus"], self.data["codec"], self.train_cfg.seed
        # The training set shuffles itself into length-grouped runs, one run per batch across all processes
        # (a distributed sampler deals consecutive items to the processes in turn).
        world = self.trainer.world_size if self.trainer is not None else 1
        self.train_set = SpeechLMDataset(corpus, self.tokenizer, "train", codec, self.mix, seed,
                                         group_by_length=self.train_cfg.batch_size * world)
        self.val_set = SpeechLMDataset(corpus, self.tokenizer, "val", codec, self.mix, seed)

    def _loader(self, dataset: SpeechLMDataset) -> ResumableDataLoader:
        return ResumableDataLoader(dataset, batch_size=self.train_cfg.batch_size, shuffle=False,
                                   collate_fn=self.collator, num_workers=self.train_cfg.num_workers,
                                   seed=self.train_cfg.seed)

    def train_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.train_set)

    def val_dataloader(self) -> ResumableDataLoader:
        return self._loader(self.val_set)


def train(config_path: str | Path | None = None, overrides: list[str] = (), resume: bool = False) -> Path | None:
    """Train (or fine-tune) the audio LM; returns the export directory (model + tokenizer), written by the
    first process only (the others return None)."""
    cfg = load_config(config_path, list(overrides), defaults=default_config())
    train_cfg = train_config(cfg["train"])
    run_dir = Path(train_cfg.run_dir)
    tokenizer = load_or_build_tokenizer(run_dir, cfg["data"]["corpus"], cfg["model"]["init_from"])
    config = model_config(cfg["model"], tokenizer)
    module = SpeechLMModule(_plain(config), asdict(train_cfg), cfg["model"]["init_from"], **cfg["finetune"])
    datamodule = SpeechDataModule(cfg["data"], tokenizer, config, train_cfg)
    trainer = fit(module, datamodule, train_cfg, run_dir, resume=resume)
    if not trainer.is_global_zero:
        return None
    return save_model(module.model, tokenizer, run_dir / "model", step=trainer.global_step, codec=cfg["data"]["codec"])


def save_model(model: HiggsAudioModel, tokenizer: TextTokenizer, out_dir: str | Path, step: int,
               codec: str | Path | None = None, half: bool = False) -> Path:
    """A model directory the engine loads: `save_pretrained` weights + config, and `tokenizer.json`.

    The config records the training step and the fingerprint of the audio tokenizer whose codes the model
    learned (`codec`, None = the shipped one), so the engine refuses to pair it with another codec."""
    out_dir = Path(out_dir)
    model.config.training_step = step
    model.config.audio_tokenizer_fingerprint = codec_fingerprint(codec)
    state = half_state_dict(model.state_dict()) if half else None  # None: the model's own weights
    model.save_pretrained(out_dir, state_dict=state)
    tokenizer.save(out_dir / TOKENIZER_FILE)
    return out_dir


def export(checkpoint: str | Path, out_dir: str | Path, codec: str | Path | None = None, half: bool = False,
           decode_codebooks: int | None = None) -> Path:
    """Export a Lightning checkpoint of a `speech train` run (its tokenizer sits two levels up) trained on
    the codes of `codec` (None = the shipped audio tokenizer); decode_codebooks: how many codebooks the engine
    decodes (HiggsAudioConfig.decode_codebooks; None: all)."""
    checkpoint = Path(checkpoint)
    try:  # our own run's resume state: hyper-parameters are plain dicts, the rest may be any object
        module = SpeechLMModule.load_from_checkpoint(str(checkpoint), map_location="cpu", weights_only=False)
        step = int(torch.load(str(checkpoint), map_location="cpu", weights_only=False).get("global_step", -1))
    except Exception as e:  # noqa: BLE001 - torch and Lightning raise many kinds for a corrupt or foreign file
        raise CheckpointError(f"{checkpoint}: not a checkpoint of a speech LM run ({e})") from e
    tokenizer = TextTokenizer.load(checkpoint.parent.parent / TOKENIZER_FILE)
    if decode_codebooks is not None:
        if not 1 <= decode_codebooks <= module.model.config.audio_num_codebooks:
            raise ValueError(f"decode_codebooks {decode_codebooks}: expected 1..{module.model.config.audio_num_codebooks}")
        module.model.config.decode_codebooks = decode_codebooks
    return save_model(module.model, tokenizer, out_dir, step=step, codec=codec, half=half)


__all__ = ["train", "export", "save_model", "SpeechLMModule", "SpeechDataModule", "default_config"]

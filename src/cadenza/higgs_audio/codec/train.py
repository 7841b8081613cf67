"""Training the codec through `core.training`: random crops of corpus wavs, spectral losses, resumable runs.

A config has four sections: `model` (CodecConfig), `data` (DataConfig: where the audio comes from and how it
is cut), `task` (TaskConfig: loss weights, the optional GAN, `init_from`) and `train` (core's TrainConfig, with
the codec's own defaults in TRAIN_DEFAULTS). A v3 codec (`model.semantic_codebook`, `task.ctc_weight > 0`) also
reads whole utterances each step: the CTC head on codebook 0 must find the transcript's phonemes (espeak-ng IPA
of the manifest text) in them.

A run directory is laid out as for every model (docs/training.md): `checkpoints/` (`last.ckpt` and step
checkpoints, for `--resume`), `logs/`, and `model/` (safetensors + config.json, the shipped format), refreshed
at every checkpoint and when training ends.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from cadenza.core.checkpoint import CheckpointError, ConfigError, config_from_dict, export_lightning_checkpoint
from cadenza.core.config import load_config
from cadenza.core.training import TrainConfig, configure_optimizers, cosine_schedule, fit, last_checkpoint, train_config
from cadenza.higgs_audio.codec.api import save_codec
from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.losses import CodecLoss
from cadenza.higgs_audio.codec.model import Codec
from cadenza.higgs_audio.manifest import read_manifest


# --- configuration --------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the audio comes from and how it is cut (batch size and workers are `train` keys)."""

    manifest: str = "data/speech/manifest.jsonl"
    train_split: str = "train"
    val_split: str = "val"
    segment_seconds: float = 1.2
    val_segment_seconds: float = 2.4
    val_items: int = 32
    gain_db: tuple[float, float] = (-12.0, 3.0)  # random level per crop: the codec must not care
    phoneme_batch_size: int = 4  # whole utterances per step for the CTC head (v3)
    phoneme_max_seconds: float = 6.0  # longer utterances are left out of the CTC batches


@dataclass
class TaskConfig:
    """The codec's own knobs: loss weights, optional adversarial fine-tuning, the codec to start from."""

    mel_weight: float = 15.0
    stft_weight: float = 1.0
    commit_weight: float = 1.0
    ctc_weight: float = 0.0  # v3: CTC loss of codebook 0's phoneme head (PAST weighs it ~12 vs its recon losses)
    # optional adversarial fine-tuning (off when adv_weight == 0): spectrogram discriminators + feature matching
    adv_weight: float = 0.0
    fm_weight: float = 2.0
    disc_lr: float = 2e-4
    disc_channels: int = 128
    # a codec directory (save_codec) to start from: every weight whose name and shape match is copied, so a
    # v3 codec starts from v2's encoder, decoder and first 7 codebooks
    init_from: str = ""
    # train the decoder only: the encoder and quantizers stay as `init_from` made them (no gradients, no codebook
    # updates), so an LM can already learn the codes while the decoder learns to speak them, e.g. from codebook 0
    # alone (`model.semantic_only_share` is then the share of steps that decode codebook 0 only)
    freeze_codes: bool = False


# Where the codec's run differs from core's TrainConfig defaults (made for the LMs): a small conv codec trains
# best with GAN-vocoder betas, little weight decay and a higher lr that decays to 5% of itself.
MIN_LR_RATIO = 0.05
TRAIN_DEFAULTS: dict[str, Any] = {
    "max_steps": 6000, "batch_size": 8, "lr": 1e-3, "min_lr": None, "warmup_steps": 200, "weight_decay": 0.01,
    "betas": (0.8, 0.99), "accelerator": "cpu", "threads": 1, "checkpoint_every_n_steps": 250,
    "val_every_n_steps": 500, "log_every_n_steps": 25,
}

# The `optim` section of the first codec configs, and where each of its keys lives now.
_MOVED = {
    **{f"optim.{k}": f"train.{k}" for k in (
        "lr", "weight_decay", "betas", "warmup_steps", "max_steps", "grad_clip", "threads", "seed", "accelerator",
        "devices", "num_nodes", "precision", "keep_checkpoints")},
    "optim.min_lr_ratio": "train.min_lr (an absolute lr; null = 5% of train.lr)",
    "optim.checkpoint_every": "train.checkpoint_every_n_steps",
    "optim.val_every": "train.val_every_n_steps",
    "optim.log_every": "train.log_every_n_steps",
    **{f"optim.{f}": f"task.{f}" for f in TaskConfig.__dataclass_fields__},
    "data.batch_size": "train.batch_size",
    "data.num_workers": "train.num_workers",
}


def default_config(run_dir: str) -> dict[str, Any]:
    """Every key a codec config may set, with its default."""
    return {
        "model": CodecConfig().to_dict(),
        "data": asdict(DataConfig()),
        "task": asdict(TaskConfig()),
        "train": {**asdict(TrainConfig()), **TRAIN_DEFAULTS, "run_dir": run_dir},
    }


def _check_format(path: str | Path | None, overrides: list[str]) -> None:
    """A config (or override) in the old `optim:` format is a ConfigError that says where each key moved."""
    old = load_config(path) if path is not None else {}
    keys = [f"{section}.{k}" for section in ("optim", "data") if isinstance(old.get(section), dict) for k in old[section]]
    keys += [item.partition("=")[0].strip() for item in overrides]
    moves = [f"{k} -> {_MOVED[k]}" for k in dict.fromkeys(keys) if k in _MOVED]
    if moves or "optim" in old:
        raise ConfigError(
            f"{path or 'overrides'}: old codec config format: codec configs now have core's `train` section and a "
            f"`task` section instead of `optim` (see configs/codec_small.yaml); move {', '.join(moves) or 'its keys'}")


def load_codec_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Defaults, then the YAML file, then `section.key=value` overrides; unknown keys and the old format are errors.
    The run directory defaults to runs/<config name>."""
    _check_format(path, list(overrides))
    run_dir = f"runs/{Path(path).stem}" if path is not None else "runs/codec"
    return load_config(path, list(overrides), defaults=default_config(run_dir))


def codec_train_config(section: dict[str, Any] | None = None) -> TrainConfig:
    """Core's TrainConfig from a `train` section, with the codec's defaults; `min_lr: null` means 5% of lr."""
    values = {**TRAIN_DEFAULTS, **(section or {})}
    if values["min_lr"] is None:
        values["min_lr"] = MIN_LR_RATIO * values["lr"]
    return train_config(values)


# --- data -----------------------------------------------------------------------------------------
class RandomCropDataset(Dataset):
    """Random fixed-length crops of the manifest's wavs, with a random gain; `length` items per epoch.

    Files shorter than a crop are zero-padded. Crops are read straight from disk (soundfile seeks),
    so memory does not grow with the corpus.
    """

    def __init__(self, rows: list[dict], segment: int, length: int, gain_db: tuple[float, float], seed: int | None = None):
        if not rows:
            raise ValueError("no audio files to train on (empty split?)")
        self.rows, self.segment, self.length, self.gain_db, self.seed = rows, segment, length, gain_db, seed
        self.frames = [int(round(r["duration"] * r.get("sample_rate", 24000))) for r in rows]

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = random.Random(self.seed * 1_000_003 + index) if self.seed is not None else random
        i = rng.randrange(len(self.rows))
        start = rng.randrange(max(1, self.frames[i] - self.segment))
        wav, _ = sf.read(self.rows[i]["audio"], start=start, frames=self.segment, dtype="float32", always_2d=True)
        wav = wav.mean(axis=1)
        if len(wav) < self.segment:
            wav = np.pad(wav, (0, self.segment - len(wav)))
        lo, hi = self.gain_db
        wav = wav * 10.0 ** (rng.uniform(lo, hi) / 20.0)
        return torch.from_numpy(np.clip(wav, -1.0, 1.0).astype(np.float32))


class UtteranceDataset(Dataset):
    """Whole utterances with their CTC phoneme targets, drawn at random (`length` items per epoch)."""

    def __init__(self, rows: list[dict], max_seconds: float, length: int, seed: int | None = None):
        from cadenza.higgs_audio.codec.phonemes import phoneme_ids
        from cadenza.higgs_audio.text import phonemize_batch

        rows = [r for r in rows if r["duration"] <= max_seconds]
        if not rows:
            raise ValueError(f"no utterances of at most {max_seconds} s for the phoneme head")
        targets = [phoneme_ids(ipa) for ipa in phonemize_batch([r["text"] for r in rows])]
        self.items = [(r["audio"], t) for r, t in zip(rows, targets) if t]
        self.length, self.seed = length, seed

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = random.Random(self.seed * 1_000_003 + index) if self.seed is not None else random
        audio, target = self.items[rng.randrange(len(self.items))]
        wav, _ = sf.read(audio, dtype="float32", always_2d=True)
        return torch.from_numpy(wav.mean(axis=1)), torch.tensor(target)


def collate_utterances(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Zero-padded audio (B, N) with its lengths, and the concatenated CTC targets with theirs."""
    wavs, targets = zip(*items)
    return {"audio": torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True),
            "audio_lengths": torch.tensor([len(w) for w in wavs]),
            "targets": torch.cat(targets), "target_lengths": torch.tensor([len(t) for t in targets])}


class SpeechCropDataModule(L.LightningDataModule):
    """Train crops (random, fresh every epoch) and fixed validation crops from a speech manifest; with
    `phonemes`, also whole utterances with phoneme targets (train: a dict of the two loaders; val: a list)."""

    def __init__(self, data: DataConfig, model: CodecConfig, batch_size: int, num_workers: int = 0,
                 steps_per_epoch: int = 1000, phonemes: bool = False):
        super().__init__()
        self.data, self.model, self.batch_size, self.num_workers = data, model, batch_size, num_workers
        self.steps_per_epoch, self.phonemes = steps_per_epoch, phonemes

    def _segment(self, seconds: float) -> int:
        hop = self.model.hop_length
        return max(1, round(seconds * self.model.sample_rate / hop)) * hop

    def setup(self, stage: str | None = None) -> None:
        d = self.data
        if self.trainer is not None and self.trainer.world_size > 1:
            # crops come from the process-wide `random`: give every DDP rank its own stream
            random.seed(random.getrandbits(32) + self.trainer.global_rank)
        train = read_manifest(d.manifest, d.train_split, absolute_audio=True)
        val = read_manifest(d.manifest, d.val_split, absolute_audio=True) or train
        self.train_set = RandomCropDataset(train, self._segment(d.segment_seconds), self.steps_per_epoch * self.batch_size, d.gain_db)
        self.val_set = RandomCropDataset(val, self._segment(d.val_segment_seconds), d.val_items, (0.0, 0.0), seed=1234)
        if self.phonemes:
            self.train_utterances = UtteranceDataset(train, d.phoneme_max_seconds, self.steps_per_epoch * d.phoneme_batch_size)
            self.val_utterances = UtteranceDataset(val, d.phoneme_max_seconds, d.val_items, seed=1234)

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        d = self.data
        crops = DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                           drop_last=True)
        if not self.phonemes:
            return crops
        utterances = DataLoader(self.train_utterances, batch_size=d.phoneme_batch_size, num_workers=self.num_workers,
                                collate_fn=collate_utterances, drop_last=True)
        return {"crops": crops, "utterances": utterances}

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        d = self.data
        crops = DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
        if not self.phonemes:
            return crops
        return [crops, DataLoader(self.val_utterances, batch_size=d.phoneme_batch_size, num_workers=self.num_workers,
                                  collate_fn=collate_utterances)]


# --- module ---------------------------------------------------------------------------------------
class CodecModule(L.LightningModule):
    """LightningModule around `Codec` + `CodecLoss`; `model`, `task` and `train` are the config's sections."""

    def __init__(self, model: dict, task: dict, train: dict | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = CodecConfig.from_dict(model)
        self.task = config_from_dict(TaskConfig, task, where="task")
        self.train_cfg = codec_train_config(train)
        self.codec = Codec(self.cfg)
        t = self.task
        self.loss = CodecLoss(self.cfg.sample_rate, t.mel_weight, t.stft_weight, t.commit_weight)
        self.discriminator = None
        if t.adv_weight > 0:
            from cadenza.higgs_audio.codec.discriminator import MultiResolutionDiscriminator

            self.discriminator = MultiResolutionDiscriminator(channels=t.disc_channels)
            self.automatic_optimization = False
        if t.ctc_weight > 0:
            from cadenza.higgs_audio.codec.phonemes import PHONEME_CLASSES

            if self.codec.semantic is None or self.cfg.n_phonemes != PHONEME_CLASSES:
                raise ValueError("task.ctc_weight > 0 needs a phonetic codebook 0: set model.semantic_codebook: true "
                                 f"and model.n_phonemes: {PHONEME_CLASSES}")
        if t.init_from:
            from cadenza.higgs_audio.codec.api import load_codec

            warm_start(self.codec, load_codec(t.init_from))
        if t.freeze_codes:
            if not t.init_from or t.ctc_weight > 0 or self.discriminator is not None:
                raise ValueError("task.freeze_codes trains the decoder of an existing codec: it needs task.init_from, "
                                 "and no ctc_weight or adv_weight")
            for part in self.code_parts():
                part.requires_grad_(False)

    def code_parts(self) -> list[torch.nn.Module]:
        """The modules that turn audio into codes (frozen by `task.freeze_codes`)."""
        return [m for m in (self.codec.encoder, self.codec.semantic, self.codec.quantizer) if m is not None]

    def frozen_forward(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder-only step of `task.freeze_codes`: (reconstruction, zero commitment, codes) from the first k
        codebooks, k = 1 on a `semantic_only_share` of steps, else as quantizer dropout would choose it."""
        for part in self.code_parts():  # in eval mode the codebooks neither move nor replace dead codes
            part.eval()
        with torch.no_grad():
            _, codes, _ = self.codec.quantize(self.codec.encoder(wav))
        n_q, cfg = codes.shape[1], self.cfg
        if cfg.semantic_codebook and random.random() < cfg.semantic_only_share:
            k = 1
        elif random.random() < cfg.quantizer_dropout:
            k = random.randint(1 + int(cfg.semantic_codebook), n_q)
        else:
            k = n_q
        return self.codec.decoder(self.codec.dequantize(codes[:, :k])), wav.new_zeros(()), codes

    def phoneme_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CTC loss of codebook 0's phoneme head on whole utterances, its log-probabilities and frame counts."""
        import torch.nn.functional as F

        log_probs = self.codec.phoneme_log_probs(batch["audio"])
        frames = (batch["audio_lengths"] + self.cfg.hop_length - 1) // self.cfg.hop_length
        loss = F.ctc_loss(log_probs.transpose(0, 1), batch["targets"], frames, batch["target_lengths"],
                          zero_infinity=True)
        return loss, log_probs, frames

    def training_step(self, batch: torch.Tensor | dict, batch_idx: int) -> torch.Tensor:
        utterances = batch.get("utterances") if isinstance(batch, dict) else None
        batch = batch["crops"] if isinstance(batch, dict) else batch
        if self.discriminator is not None:
            return self._adversarial_step(batch)
        layers = [*self.codec.quantizer.layers] + ([self.codec.semantic.vq] if self.codec.semantic is not None else [])
        if self.task.freeze_codes:
            recon, commit, codes = self.frozen_forward(batch)
        elif not all(bool(layer._codebook.initted) for layer in layers):
            self.codec.quantizer.quantize_dropout = False  # k-means init every codebook on one batch
            recon, commit, codes = self._forward_no_dropout(batch)
        else:
            recon, commit, codes = self.codec(batch)
        loss, parts = self.loss(recon, batch, commit)
        if utterances is not None:
            ctc, _, _ = self.phoneme_loss(utterances)
            loss = loss + self.task.ctc_weight * ctc
            self.log("train/ctc", ctc.detach(), prog_bar=True)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mel", parts["mel"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "mel"}, prog_bar=False)
        return loss

    def _adversarial_step(self, batch: torch.Tensor) -> torch.Tensor:
        from cadenza.higgs_audio.codec.discriminator import discriminator_loss, generator_losses

        t, clip = self.task, self.train_cfg.grad_clip
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        recon, commit, _ = self.codec(batch)
        # discriminator: stepped on the raw optimizer so Lightning counts one step per batch
        d_loss = discriminator_loss(self.discriminator(batch), self.discriminator(recon.detach()))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_d.optimizer.step()
        sched_d.step()
        # generator (the codec)
        real, fake = self.discriminator(batch), self.discriminator(recon)
        adv, fm = generator_losses(real, fake)
        loss, parts = self.loss(recon, batch, commit)
        g_loss = loss + t.adv_weight * adv + t.fm_weight * fm
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        self.clip_gradients(opt_g, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        opt_g.step()
        sched_g.step()
        self.log("train/loss", g_loss, prog_bar=True)
        self.log("train/mel", parts["mel"], prog_bar=True)
        self.log_dict({"train/stft": parts["stft"], "train/commit": parts["commit"], "train/adv": adv.detach(),
                       "train/fm": fm.detach(), "train/disc": d_loss.detach()})
        return g_loss

    def _forward_no_dropout(self, batch: torch.Tensor):
        p = self.cfg.quantizer_dropout
        self.cfg.quantizer_dropout = 0.0
        try:
            return self.codec(batch)
        finally:
            self.cfg.quantizer_dropout = p

    def validation_step(self, batch: torch.Tensor | dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        if dataloader_idx == 1:  # whole utterances: how well codebook 0 alone tells the phonemes
            ctc, log_probs, frames = self.phoneme_loss(batch)
            self.log("val/ctc", ctc, add_dataloader_idx=False, sync_dist=True)
            self.log("val/phoneme_error_rate", greedy_phoneme_error_rate(log_probs, frames, batch),
                     add_dataloader_idx=False, sync_dist=True)
            return
        recon, commit, codes = self.codec(batch)
        loss, parts = self.loss(recon, batch, commit)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, add_dataloader_idx=False)
        self.log_dict({f"val/{k}": v for k, v in parts.items()}, sync_dist=True, add_dataloader_idx=False)
        # codebook use: a codec whose later codebooks collapse wastes bitrate
        used = [torch.unique(codes[:, q]).numel() / self.cfg.codebook_size for q in range(codes.shape[1])]
        self.log("val/codebook_use", float(np.mean(used)), sync_dist=True, add_dataloader_idx=False)
        if self.codec.semantic is not None:  # what the LM's first codebook alone sounds like
            _, first = self.loss(self.codec.decode(codes[:, :1]), batch, commit)
            self.log("val/mel_codebook0", first["mel"], sync_dist=True, add_dataloader_idx=False)

    def configure_optimizers(self):
        generator = configure_optimizers(self.codec, self.train_cfg)  # no decay on biases and norms
        if self.discriminator is None:
            return generator
        t = self.train_cfg
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=self.task.disc_lr, betas=t.betas)
        sched_d = cosine_schedule(opt_d, t.warmup_steps, t.max_steps, t.min_lr / t.lr)
        return [generator["optimizer"], opt_d], [generator["lr_scheduler"], {"scheduler": sched_d, "interval": "step"}]


def greedy_phoneme_error_rate(log_probs: torch.Tensor, frames: torch.Tensor, batch: dict[str, torch.Tensor]) -> float:
    """Edit distance of the greedy CTC reading of each utterance to its phonemes, over the phoneme count."""
    from cadenza.higgs_audio.speech_metrics import edit_distance

    errors = total = 0
    targets = batch["targets"].split(batch["target_lengths"].tolist())
    for best, n, target in zip(log_probs.argmax(-1), frames.tolist(), targets):
        read = torch.unique_consecutive(best[:n])
        read = read[read != 0].tolist()
        errors += edit_distance(target.tolist(), read)
        total += len(target)
    return errors / max(1, total)


def warm_start(codec: Codec, source: Codec) -> None:
    """Copy every weight of `source` whose name and shape match into `codec` (the rest keeps its init)."""
    own = codec.state_dict()
    matching = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
    codec.load_state_dict(matching, strict=False)


class ExportModel(L.Callback):
    """At every checkpoint step, refresh the shipped format (safetensors + config.json) in `out_dir`."""

    def __init__(self, out_dir: Path, every: int, config: dict[str, Any]):
        self.out_dir, self.every, self.config = out_dir, every, config

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every > 0 and trainer.global_step % self.every == 0 and trainer.is_global_zero:
            self.save(trainer, pl_module)

    def save(self, trainer: L.Trainer, pl_module: CodecModule) -> Path:
        """Write the codec as it is now, with the step and the run's config beside it."""
        return save_codec(pl_module.codec, self.out_dir, extra={"step": trainer.global_step, "config": self.config})


class PrintCallback(L.Callback):
    """One plain line of losses every `every` steps, readable in a nohup log."""

    def __init__(self, every: int):
        self.every, self.started = every, time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and trainer.is_global_zero:
            m = {k: float(v) for k, v in trainer.callback_metrics.items()}
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            parts = " ".join(f"{k}={v:.4f}" for k, v in sorted(m.items()))
            print(f"step {step} t={time.monotonic() - self.started:.0f}s lr={lr:.2e} {parts}", flush=True)


def train(config_path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), resume: bool = False,
          run_dir: str | Path | None = None) -> Path | None:
    """Train a codec, or with `resume` continue its run from RUN_DIR/checkpoints/last.ckpt; returns RUN_DIR/model
    (None in the other DDP processes). `run_dir` replaces `train.run_dir`."""
    cfg = load_codec_config(config_path, overrides)
    if run_dir is not None:
        cfg["train"]["run_dir"] = str(run_dir)
    train_cfg = codec_train_config(cfg["train"])
    run_dir = Path(train_cfg.run_dir)
    if not resume and last_checkpoint(run_dir) is not None:  # hours of training are not overwritten by a typo
        raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume, or choose another run directory")
    model_cfg = CodecConfig.from_dict(cfg["model"])
    L.seed_everything(train_cfg.seed, verbose=False)  # the same initial weights every time
    module = CodecModule(cfg["model"], cfg["task"], asdict(train_cfg))
    data = SpeechCropDataModule(config_from_dict(DataConfig, cfg["data"], where="data"), model_cfg,
                                train_cfg.batch_size, train_cfg.num_workers, phonemes=module.task.ctc_weight > 0)
    export = ExportModel(run_dir / "model", train_cfg.checkpoint_every_n_steps, cfg)
    trainer = fit(module, data, train_cfg, run_dir, resume=resume,
                  callbacks=[export, PrintCallback(train_cfg.log_every_n_steps)])
    return export.save(trainer, module) if trainer.is_global_zero else None


def export(checkpoint: str | Path, out_dir: str | Path, half: bool = False) -> Path:
    """The shipped format (safetensors + config.json) from any Lightning checkpoint of a codec run; `half` stores
    float16 weights."""
    try:  # our own run's resume state: hyper-parameters are plain dicts, the rest may be any object
        saved = torch.load(str(checkpoint), map_location="cpu", weights_only=False)
        model_cfg = CodecConfig.from_dict(saved["hyper_parameters"]["model"])
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        raise CheckpointError(f"{checkpoint}: not a checkpoint of a codec run ({e})") from e
    return export_lightning_checkpoint(checkpoint, out_dir, model_cfg, prefix="codec.",
                                       extra={"step": saved.get("global_step", -1)}, half=half)

"""Training the codec with Lightning: random crops of corpus wavs, spectral losses, resumable runs.

A v3 codec (`model.semantic_codebook`, `optim.ctc_weight > 0`) also reads whole utterances each step: the CTC
head on codebook 0 must find the transcript's phonemes (espeak-ng IPA of the manifest text) in them.

A run directory holds `config.yaml` (the resolved config), `checkpoints/` (Lightning `last.ckpt` and
numbered step checkpoints, for resuming), `metrics.csv` logs and `export/` (safetensors + config.json,
the shipped format), refreshed at every checkpoint.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from cadenza.higgs_audio.codec.config import CodecConfig
from cadenza.higgs_audio.codec.losses import CodecLoss
from cadenza.higgs_audio.codec.model import Codec


# --- configuration --------------------------------------------------------------------------------
@dataclass
class DataConfig:
    """Where the audio comes from and how it is cut."""

    manifest: str = "data/speech/manifest.jsonl"
    train_split: str = "train"
    val_split: str = "val"
    segment_seconds: float = 1.2
    val_segment_seconds: float = 2.4
    val_items: int = 32
    batch_size: int = 8
    gain_db: tuple[float, float] = (-12.0, 3.0)  # random level per crop: the codec must not care
    num_workers: int = 0
    phoneme_batch_size: int = 4  # whole utterances per step for the CTC head (v3)
    phoneme_max_seconds: float = 6.0  # longer utterances are left out of the CTC batches


@dataclass
class OptimConfig:
    """Optimiser, schedule, steps, checkpoints and logging of a codec run."""

    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.8, 0.99)
    warmup_steps: int = 200
    max_steps: int = 6000
    grad_clip: float = 1.0
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
    threads: int = 1
    seed: int = 0
    accelerator: str = "cpu"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "32-true"
    checkpoint_every: int = 250
    keep_checkpoints: int = 3
    val_every: int = 500
    log_every: int = 25


@dataclass
class CodecTrainConfig:
    """model (CodecConfig) + data + optim: what a YAML file under configs/ holds."""

    model: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    def to_dict(self) -> dict:
        """Nested plain dict (YAML/JSON-ready)."""
        from dataclasses import asdict

        return {"model": asdict(self.model), "data": asdict(self.data), "optim": asdict(self.optim)}


def _coerce(value: str):
    import yaml

    return yaml.safe_load(value)


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> CodecTrainConfig:
    """Read a YAML config (sections model/data/optim) and apply `section.key=value` overrides."""
    import yaml

    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such config file")
        raw = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(raw) - {"model", "data", "optim"})
    if unknown:
        raise ValueError(f"{path}: unknown config sections {unknown} (expected model, data, optim)")
    for item in overrides or []:
        if "=" not in item or "." not in item.split("=", 1)[0]:
            raise ValueError(f"override {item!r} must look like section.key=value, e.g. optim.max_steps=100")
        key, value = item.split("=", 1)
        section, name = key.split(".", 1)
        raw.setdefault(section, {})[name] = _coerce(value)
    model = CodecConfig.from_dict(raw.get("model", {}))
    sections = {}
    for name, cls in (("data", DataConfig), ("optim", OptimConfig)):
        values = raw.get(name, {})
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(values) - known)
        if bad:
            raise ValueError(f"unknown {name} config keys: {', '.join(bad)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        sections[name] = cls(**values)
    return CodecTrainConfig(model=model, **sections)


# --- data -----------------------------------------------------------------------------------------
def read_manifest(path: str | Path, split: str | None = None) -> list[dict]:
    """Rows of a speech corpus manifest (JSONL), optionally of one split; `audio` made absolute."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such manifest (build one with `cadenza data speech`)")
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line_no}: not JSON ({exc})") from exc
        if split is None or row.get("split") == split:
            row["audio"] = str((path.parent / row["audio"]).resolve())
            rows.append(row)
    return rows


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

    def __init__(self, data: DataConfig, model: CodecConfig, steps_per_epoch: int = 1000, phonemes: bool = False):
        super().__init__()
        self.data, self.model = data, model
        self.steps_per_epoch, self.phonemes = steps_per_epoch, phonemes

    def _segment(self, seconds: float) -> int:
        hop = self.model.hop_length
        return max(1, round(seconds * self.model.sample_rate / hop)) * hop

    def setup(self, stage: str | None = None) -> None:
        d = self.data
        if self.trainer is not None and self.trainer.world_size > 1:
            # crops come from the process-wide `random`: give every DDP rank its own stream
            random.seed(random.getrandbits(32) + self.trainer.global_rank)
        train = read_manifest(d.manifest, d.train_split)
        val = read_manifest(d.manifest, d.val_split) or train
        self.train_set = RandomCropDataset(train, self._segment(d.segment_seconds), self.steps_per_epoch * d.batch_size, d.gain_db)
        self.val_set = RandomCropDataset(val, self._segment(d.val_segment_seconds), d.val_items, (0.0, 0.0), seed=1234)
        if self.phonemes:
            self.train_utterances = UtteranceDataset(train, d.phoneme_max_seconds, self.steps_per_epoch * d.phoneme_batch_size)
            self.val_utterances = UtteranceDataset(val, d.phoneme_max_seconds, d.val_items, seed=1234)

    def train_dataloader(self) -> DataLoader | dict[str, DataLoader]:
        d = self.data
        crops = DataLoader(self.train_set, batch_size=d.batch_size, shuffle=False, num_workers=d.num_workers, drop_last=True)
        if not self.phonemes:
            return crops
        utterances = DataLoader(self.train_utterances, batch_size=d.phoneme_batch_size, num_workers=d.num_workers,
                                collate_fn=collate_utterances, drop_last=True)
        return {"crops": crops, "utterances": utterances}

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        d = self.data
        crops = DataLoader(self.val_set, batch_size=d.batch_size, num_workers=d.num_workers)
        if not self.phonemes:
            return crops
        return [crops, DataLoader(self.val_utterances, batch_size=d.phoneme_batch_size, num_workers=d.num_workers,
                                  collate_fn=collate_utterances)]


# --- module ---------------------------------------------------------------------------------------
def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, cosine decay to `min_ratio` at `total`, flat after."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CodecModule(L.LightningModule):
    """LightningModule around `Codec` + `CodecLoss`."""

    def __init__(self, model: dict, optim: dict):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = CodecConfig.from_dict(model)
        self.optim_cfg = OptimConfig(**optim)
        self.codec = Codec(self.cfg)
        o = self.optim_cfg
        self.loss = CodecLoss(self.cfg.sample_rate, o.mel_weight, o.stft_weight, o.commit_weight)
        self.discriminator = None
        if o.adv_weight > 0:
            from cadenza.higgs_audio.codec.discriminator import MultiResolutionDiscriminator

            self.discriminator = MultiResolutionDiscriminator(channels=o.disc_channels)
            self.automatic_optimization = False
        if o.ctc_weight > 0:
            from cadenza.higgs_audio.codec.phonemes import PHONEME_CLASSES

            if self.codec.semantic is None or self.cfg.n_phonemes != PHONEME_CLASSES:
                raise ValueError("optim.ctc_weight > 0 needs a phonetic codebook 0: set model.semantic_codebook: true "
                                 f"and model.n_phonemes: {PHONEME_CLASSES}")
        if o.init_from:
            from cadenza.higgs_audio.codec.api import load_codec

            warm_start(self.codec, load_codec(o.init_from))

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
        if not all(bool(layer._codebook.initted) for layer in layers):
            self.codec.quantizer.quantize_dropout = False  # k-means init every codebook on one batch
            recon, commit, codes = self._forward_no_dropout(batch)
        else:
            recon, commit, codes = self.codec(batch)
        loss, parts = self.loss(recon, batch, commit)
        if utterances is not None:
            ctc, _, _ = self.phoneme_loss(utterances)
            loss = loss + self.optim_cfg.ctc_weight * ctc
            self.log("train/ctc", ctc.detach(), prog_bar=True)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/mel", parts["mel"], prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in parts.items() if k != "mel"}, prog_bar=False)
        return loss

    def _adversarial_step(self, batch: torch.Tensor) -> torch.Tensor:
        from cadenza.higgs_audio.codec.discriminator import discriminator_loss, generator_losses

        o = self.optim_cfg
        opt_g, opt_d = self.optimizers()
        sched_g, sched_d = self.lr_schedulers()
        recon, commit, _ = self.codec(batch)
        # discriminator: stepped on the raw optimizer so Lightning counts one step per batch
        d_loss = discriminator_loss(self.discriminator(batch), self.discriminator(recon.detach()))
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        self.clip_gradients(opt_d, gradient_clip_val=o.grad_clip, gradient_clip_algorithm="norm")
        opt_d.optimizer.step()
        sched_d.step()
        # generator (the codec)
        real, fake = self.discriminator(batch), self.discriminator(recon)
        adv, fm = generator_losses(real, fake)
        loss, parts = self.loss(recon, batch, commit)
        g_loss = loss + o.adv_weight * adv + o.fm_weight * fm
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        self.clip_gradients(opt_g, gradient_clip_val=o.grad_clip, gradient_clip_algorithm="norm")
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

    def configure_optimizers(self):
        o = self.optim_cfg
        decay, no_decay = [], []
        for name, p in self.codec.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 else decay).append(p)
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=o.lr, betas=o.betas
        )
        schedule = lambda s: warmup_cosine(s, o.warmup_steps, o.max_steps, o.min_lr_ratio)  # noqa: E731
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        if self.discriminator is None:
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        opt_d = torch.optim.AdamW(self.discriminator.parameters(), lr=o.disc_lr, betas=o.betas)
        sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule)
        return [opt, opt_d], [{"scheduler": sched, "interval": "step"}, {"scheduler": sched_d, "interval": "step"}]


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


class ExportCallback(L.Callback):
    """After each checkpoint, write the shipped format (safetensors + config.json) to run/export."""

    def __init__(self, export_dir: Path, every: int):
        self.export_dir, self.every = export_dir, every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step % self.every == 0 and trainer.is_global_zero:
            from cadenza.higgs_audio.codec.api import save_codec

            save_codec(pl_module.codec, self.export_dir, extra={"step": step})

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            from cadenza.higgs_audio.codec.api import save_codec

            save_codec(pl_module.codec, self.export_dir, extra={"step": trainer.global_step})


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


def train_codec(cfg: CodecTrainConfig, run_dir: str | Path, resume: bool = False, progress: bool = True) -> Path:
    """Train (or resume, from run_dir/checkpoints/last.ckpt) a codec; return the export directory."""
    import yaml
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    o = cfg.optim
    torch.set_num_threads(o.threads)
    L.seed_everything(o.seed, workers=True)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    last = run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.exists():
        raise FileNotFoundError(f"{last}: nothing to resume from")
    if not resume and last.exists():
        raise FileExistsError(f"{run_dir} already has checkpoints: pass --resume, or choose another --run-dir")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    module = CodecModule(cfg.to_dict()["model"], cfg.to_dict()["optim"])
    data = SpeechCropDataModule(cfg.data, cfg.model, phonemes=o.ctc_weight > 0)
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="step{step:07d}", auto_insert_metric_name=False,
        every_n_train_steps=o.checkpoint_every, save_top_k=o.keep_checkpoints, monitor="step", mode="max", save_last=True,
        # A resumed run must overwrite last.ckpt: in a run directory that had moved, Lightning's version
        # counter wrote last-v1.ckpt instead, and the next --resume went back to the stale last.ckpt.
        enable_version_counter=False,
    )
    export_dir = run_dir / "export"
    trainer = L.Trainer(
        accelerator=o.accelerator, devices=o.devices, num_nodes=o.num_nodes, precision=o.precision,
        max_steps=o.max_steps, gradient_clip_val=o.grad_clip if o.adv_weight <= 0 else None, val_check_interval=o.val_every,
        check_val_every_n_epoch=None, num_sanity_val_steps=0, log_every_n_steps=o.log_every,
        logger=CSVLogger(run_dir, name="logs"), default_root_dir=run_dir,
        callbacks=[checkpoints, ExportCallback(export_dir, o.checkpoint_every), PrintCallback(o.log_every)],
        enable_progress_bar=progress, enable_model_summary=True,
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    return export_dir

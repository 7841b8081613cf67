"""Does the Staria generator read its prompt, and does it copy its repeats? A teacher-forced check, cheap enough
to run on a checkpoint while training goes on (a few minutes on one core).

On validation pieces of a synthetic corpus it measures the grammar-restricted cross-entropy of the piece:
- with its own prompt, with another piece's prompt (the batch rolled by one), and with no prompt
  (the unconditional branch: <PROMPT_START> <FORM> only);
- split by where the token is: the first section of each letter (which its snippet holds), and the later
  sections that repeat a letter (which the piece itself holds, earlier).
A model that reads its prompt scores the first sections far better with its own prompt than with another's;
a model that writes its own repeats scores repeated sections far better than first ones, with any prompt.

    python scripts/staria_prompt_gain.py MODEL_DIR_OR_CKPT [--corpus data/synth_768] [--batches 8]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cadenza.core.checkpoint import config_from_dict, load_pretrained
from cadenza.staria.datamodule import StariaDataModule
from cadenza.staria.models import StariaConfig, StariaSeq2Seq
from cadenza.staria.prompt import UNCONDITIONAL_LEN, section_spans
from cadenza.staria.tasks import GrammarLoss
from cadenza.staria.tokenizer import IGNORE_INDEX, StariaTokenizer


def load_generator(path: Path) -> StariaSeq2Seq:
    """An exported model directory, or a Lightning checkpoint of a `staria` run."""
    if path.is_dir():
        state, document = load_pretrained(path, kind="StariaConfig")
        model = StariaSeq2Seq(config_from_dict(StariaConfig, document["config"]))
    else:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = StariaSeq2Seq(config_from_dict(StariaConfig, ckpt["hyper_parameters"]["model"]))
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model.load_state_dict(state)
    return model.eval()


def token_places(tokenizer: StariaTokenizer, decoder_input: torch.Tensor) -> torch.Tensor:
    """Per target position: 1 = in the first section of its letter, 2 = in a repeat of a letter, 0 = elsewhere."""
    places = torch.zeros_like(decoder_input)
    for row, ids in enumerate(decoder_input.numpy()):
        seen = set()
        for letter, start, end in section_spans(tokenizer, ids):
            # the target at position p is the token at p + 1: a section's notes are targets of [start, end - 1)
            places[row, start:end - 1] = 2 if letter in seen else 1
            seen.add(letter)
    return places


@torch.inference_mode()
def losses(model: StariaSeq2Seq, loss_fn: GrammarLoss, batch: dict, prompt: torch.Tensor, mask: torch.Tensor,
           places: torch.Tensor) -> dict[str, float]:
    """Mean loss over first-section and repeat targets given this prompt."""
    context = model.encode(prompt, mask)
    hidden = model.decode(batch["decoder_input"], batch["decoder_mask"], context, mask, prompt)
    out = {}
    for name, place in (("first", 1), ("repeat", 2)):
        target = batch["target"].masked_fill(places != place, IGNORE_INDEX)
        count = int((target != IGNORE_INDEX).sum())
        out[name] = (float(loss_fn(hidden, model.decoder.to_logits.weight, batch["decoder_input"], target)), count)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--corpus", default="data/synth_768")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_generator(args.model)
    tokenizer = StariaTokenizer()
    data = StariaDataModule([args.corpus], task="generative", batch_size=args.batch_size,
                            max_seq_len=model.cfg.max_seq_len, prompt=True,
                            form_token=True, snippet_len=256)
    data.setup()
    loss_fn = GrammarLoss(tokenizer)
    sums: dict[str, dict[str, list[float]]] = {}
    for k, batch in enumerate(data.val_dataloader()):
        if k == args.batches:
            break
        places = token_places(tokenizer, batch["decoder_input"])
        prompt, mask = batch["encoder_input"], batch["encoder_mask"]
        unconditional = mask.clone()
        unconditional[:, UNCONDITIONAL_LEN:] = False
        for name, (p, m) in {"own": (prompt, mask), "other": (prompt.roll(1, 0), mask.roll(1, 0)),
                             "none": (prompt, unconditional)}.items():
            for where, (loss, count) in losses(model, loss_fn, batch, p, m, places).items():
                sums.setdefault(f"{name}/{where}", []).append((loss * count, count))
    report = {key: round(sum(a for a, _ in v) / max(1, sum(c for _, c in v)), 4) for key, v in sums.items()}
    report["prompt_gain_first"] = round(report["other/first"] - report["own/first"], 4)
    report["repeat_advantage_none"] = round(report["none/first"] - report["none/repeat"], 4)
    print(json.dumps({"model": str(args.model), **report}, indent=1))


if __name__ == "__main__":
    main()

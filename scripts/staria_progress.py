"""Is the generator learning to follow its prompt and to write its own repeats? A check of a checkpoint
(or an exported model) while its training run goes on.

    python scripts/staria_progress.py CHECKPOINT_OR_MODEL_DIR [--corpus data/music21] [--pieces 8]

Each of the N prompts is a MIDI file with two marked sections, "A" and "B": the openings (about
`--snippet-len` tokens) of two held-out real pieces (the corpus' test split, which no synthetic training
piece is cut from). The generator writes one piece per prompt in `--form` twice: with `--repeat free`
(the model writes the repeats) and with `--repeat copy` (repeats replayed). Printed as JSON, per mode:
- prompt following: the share of generated sections closer to their own snippet than to the other one
  (`staria/prompt_following.py`; chance 50%), the goal is >= 80%;
- form adherence: the share of pieces whose markers spell the form and whose same-letter sections are
  alike and different-letter ones distinct (`staria/form_adherence.py`), the goal with free repeats is
  >= 60% (copy: ~100% by construction, when sections hold enough notes).
A Lightning checkpoint is read without stopping or exporting its run (the model config comes from the
checkpoint's hyper-parameters); a `stepNNNNNNN.ckpt` is never rewritten, while `last.ckpt` may be mid-write.
Under a minute on one core for the defaults (8 pieces of 512 tokens; 43 s beside two busy processes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from symusic import Score

from cadenza.core.checkpoint import config_from_dict, load_config_json
from cadenza.staria.cache import TokenCache
from cadenza.staria.events import events_to_score, join_sections
from cadenza.staria.generate import GenerationConfig, StariaGenerator
from cadenza.staria.models import StariaConfig, StariaSeq2Seq
from cadenza.staria.piece_eval import evaluate_piece
from cadenza.staria.prompt_following import following_rate, snippet_events
from cadenza.staria.synthetic import opening_notes
from cadenza.staria.tokenizer import StariaTokenizer

MIN_OPENING_NOTES = 16  # a shorter opening says too little about its piece to be told from another


def load_generator(source: Path) -> tuple[StariaGenerator, int | None]:
    """The generator of an exported model directory or of a training run's Lightning checkpoint, and its step."""
    if source.is_dir():
        return StariaGenerator.from_pretrained(source), load_config_json(source)["extra"].get("step")
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)  # our own run's file
    model = StariaSeq2Seq(config_from_dict(StariaConfig, checkpoint["hyper_parameters"]["model"]))
    model.load_state_dict({k[len("model."):]: v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")})
    return StariaGenerator(model), checkpoint.get("global_step")


def two_section_prompts(tokenizer: StariaTokenizer, corpus: Path, n: int, snippet_len: int, seed: int,
                        split: str = "test") -> list[Score]:
    """N prompt MIDI Scores, each with the openings of two different held-out pieces as sections A and B."""
    cache, rng = TokenCache(corpus), np.random.default_rng(seed)
    openings = []
    for i in rng.permutation(cache.indices(split)):
        events, _ = tokenizer.ids_to_events(cache.ids(int(i)))
        opening = events.take(slice(0, opening_notes(events, snippet_len)))
        if len(opening) >= MIN_OPENING_NOTES:
            openings.append(opening)
        if len(openings) == 2 * n:
            break
    if len(openings) < 2 * n:
        raise SystemExit(f"{corpus}: {len(openings)} {split} pieces of >= {MIN_OPENING_NOTES} notes, need {2 * n}")
    return [events_to_score(join_sections([("A", openings[2 * k]), ("B", openings[2 * k + 1])])) for k in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="last.ckpt of a `cadenza music train staria` run, or a model dir")
    parser.add_argument("--corpus", type=Path, default=Path("data/music21"), help="real corpus (its test split)")
    parser.add_argument("--pieces", type=int, default=8, help="prompts (pieces per repeat mode)")
    parser.add_argument("--form", default="ABAB")
    parser.add_argument("--max-tokens", type=int, default=512, help="tokens per generated piece")
    parser.add_argument("--snippet-len", type=int, default=256, help="tokens of each prompt section")
    parser.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.time()
    generator, step = load_generator(args.source)
    prompts = two_section_prompts(generator.tok, args.corpus, args.pieces, args.snippet_len, args.seed)
    encoder_inputs = [generator.prompt(args.form, generator.snippets(args.form, p, args.seed), args.snippet_len)
                      for p in prompts]
    prompt_snippets = [snippet_events(p, args.snippet_len) for p in prompts]  # what prompt following compares with
    report = {"source": str(args.source), "step": step, "form": args.form, "pieces": len(prompts),
              "max_tokens": args.max_tokens, "snippet_len": args.snippet_len, "cfg": args.cfg}
    for repeat in ("free", "copy"):
        config = GenerationConfig(max_tokens=args.max_tokens, seed=args.seed, repeat=repeat, cfg_scale=args.cfg,
                                  snippet_len=args.snippet_len)
        pieces = generator.generate_ids(args.form, encoder_inputs, config)
        results = [evaluate_piece(generator.tok.detokenize(ids), args.form, snippets=snippets)
                   for ids, snippets in zip(pieces, prompt_snippets)]
        report[repeat] = {"prompt_following": following_rate([r["prompt_following"]["sections"] for r in results]),
                          "form_found_rate": float(np.mean([r["form_found"] for r in results])),
                          "notes_per_piece": float(np.mean([r["statistics"]["n_notes"] for r in results]))}
        print(f"{repeat}: done after {time.time() - started:.0f} s", file=sys.stderr)
    report["seconds"] = round(time.time() - started, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

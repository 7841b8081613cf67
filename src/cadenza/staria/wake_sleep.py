"""Wake-sleep: a section classifier learns sections on synthetic pieces, then labels real music for the generator.

One round has three stages, each runnable alone (`cadenza music wake-sleep --stage ...`); round r keeps
its files under `OUT/round{r}/`:

- **sleep**: `train("classifier")` on the synthetic corpus -> `classifier/model`. From round 2 on the
  training set also holds *dreams*: pieces the previous round's generator wrote for known forms, labelled
  by construction (they carry section tokens), and the classifier starts from the previous one.
- **wake**: the frozen classifier labels every piece of a real corpus token by token (section tokens
  stripped first; long pieces in overlapping windows), the labels are smoothed into sections the way
  `form_from_labels` cleans runs, and a piece is kept when its recovered form is a known form other than
  "A" and every section is confidently labelled (mean probability of the section's letter over its
  tokens >= threshold). Kept pieces get section tokens at their section starts -> `pseudo/` (TokenCache)
  with `wake_report.json` (kept/dropped per form) and `report.jsonl` (every dropped piece and why).
- **generate**: `train("staria")` on synthetic + pseudo-labelled real music -> `generator/model`.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm import tqdm

from cadenza.staria.cache import REPORT, TokenCache, split_of, write_cache
from cadenza.staria.events import NO_SECTION
from cadenza.staria.forms import FORM_LABEL_MAP, LETTERS, SWITCH_COST, decode_sections, relabel_by_first_appearance
from cadenza.staria.labeller import SectionLabeller, chunks
from cadenza.staria.synthetic import section_letters
from cadenza.staria.tokenizer import K_DUR, K_ONSET, StariaTokenizer
from cadenza.staria.train import train

WAKE_REPORT = "wake_report.json"
STAGES = ("sleep", "wake", "generate", "all")
# Forms the generator dreams in for the next sleep: the synthetic forms a real piece can be labelled with.
DREAM_FORMS = ("AB", "ABC", "ABA", "ABAB", "ABAC", "ABCA", "ABCB", "ABCD")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- labelling


def section_runs(labels: np.ndarray, min_fraction: float = 0.05) -> list[tuple[int, int, int]]:
    """(label, start, end) sections of per-token labels, cleaned like `form_from_labels`.

    Runs shorter than ceil(min_fraction * n) tokens are noise: each joins the section before it (noise at
    the very start joins the first section); then neighbouring sections with the same label merge.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if n == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    starts, ends = np.r_[0, change], np.r_[change, n]
    long = (ends - starts) >= math.ceil(min_fraction * n)
    if not long.any():
        long[np.argmax(ends - starts)] = True
    kept = [(int(labels[s]), int(s)) for s in starts[long]]
    runs: list[tuple[int, int, int]] = []
    for i, (label, start) in enumerate(kept):
        end = kept[i + 1][1] if i + 1 < len(kept) else n
        if runs and runs[-1][0] == label:
            runs[-1] = (label, runs[-1][1], end)
        else:
            runs.append((label, 0 if not runs else start, end))
    return runs


@dataclass
class PseudoLabel:
    """What the wake stage made of one piece."""

    form: str  # the recovered form ("" for a piece without tokens)
    confidence: list[float]  # per section: mean probability of its letter over its tokens
    ids: np.ndarray | None = None  # the piece with section tokens, when kept
    reason: str | None = None  # why it was dropped: no_notes | form | confidence | sections

    @property
    def kept(self) -> bool:
        """Whether the piece joins the pseudo-labelled corpus."""
        return self.reason is None


def note_index_of_tokens(tokenizer: StariaTokenizer, ids: np.ndarray) -> np.ndarray:
    """For each token, the note a section starting there opens on: the note it belongs to (onset and
    duration tokens), else the next note (note tokens themselves, <T>, prefix tokens)."""
    starts = tokenizer.is_note(ids)
    before = np.cumsum(starts) - starts  # notes that start before each position
    kind = tokenizer.kinds(ids)
    inside = (kind == K_ONSET) | (kind == K_DUR)
    return np.where(inside, before - 1, before)


def pseudo_label(tokenizer: StariaTokenizer, ids: np.ndarray, probs: np.ndarray, threshold: float = 0.9,
                 min_fraction: float = 0.05, switch_cost: float = SWITCH_COST) -> PseudoLabel:
    """Sections of a piece (ids without section tokens) from its per-token probabilities (decoded into
    whole sections, `decode_sections`; switch_cost 0 = token-wise argmax), and whether to keep it."""
    ids = np.asarray(ids, dtype=np.int64)
    letters_per_token = decode_sections(probs, switch_cost) if switch_cost > 0 else probs.argmax(axis=1)
    runs = section_runs(letters_per_token, min_fraction) if len(ids) else []
    letters = relabel_by_first_appearance([LETTERS[label] for label, _, _ in runs])
    form = "".join(letters)
    confidence = [float(probs[start:end, label].mean()) for label, start, end in runs]
    events, _ = tokenizer.ids_to_events(ids)
    if len(events) == 0:
        return PseudoLabel(form, confidence, reason="no_notes")
    if form not in FORM_LABEL_MAP or form == "A":
        return PseudoLabel(form, confidence, reason="form")
    if min(confidence) < threshold:
        return PseudoLabel(form, confidence, reason="confidence")
    first_notes = note_index_of_tokens(tokenizer, ids)[[start for _, start, _ in runs]]
    if first_notes[-1] >= len(events) or np.any(np.diff(first_notes) <= 0):
        return PseudoLabel(form, confidence, reason="sections")  # a section too short to hold a note
    events.section[:] = NO_SECTION
    events.section[first_notes] = [LETTERS.index(letter) for letter in letters]
    labelled = tokenizer.events_to_ids(events)
    # Two sections opening within one chord land on the same note when the piece is re-encoded.
    if section_letters(tokenizer, labelled) != form:
        return PseudoLabel(form, confidence, reason="sections")
    return PseudoLabel(form, confidence, ids=labelled.astype(np.int64))


@dataclass
class WakeConfig:
    """How the wake stage labels a corpus and which pieces it keeps."""

    threshold: float = 0.9  # every section's mean letter probability must reach this
    min_fraction: float = 0.05  # runs shorter than this share of a piece are noise (as in form_from_labels)
    switch_cost: float = SWITCH_COST  # per section change when decoding letters (0: token-wise argmax)
    batch_size: int = 8
    overlap: int = 128  # tokens shared by neighbouring windows of a long piece
    limit: int | None = None  # label only the first N pieces (quick looks at a big corpus)


Labeller = Callable[[Sequence[np.ndarray]], list[np.ndarray]]  # pieces -> (n_tokens, 4) probabilities each


def wake(corpus: str | Path, out: str | Path, labeller: Labeller, cfg: WakeConfig | None = None,
         progress: bool = True) -> dict[str, Any]:
    """Pseudo-label a real corpus into `out` (TokenCache) and return the report (also `out/wake_report.json`).

    `labeller` is usually a `SectionLabeller`; the batch size and overlap of `cfg` are its business.
    """
    cfg = cfg or WakeConfig()
    corpus, out = Path(corpus), Path(out)
    cache, tok = TokenCache(corpus), StariaTokenizer()
    name = corpus.resolve().name
    indices = list(range(len(cache)))[:cfg.limit]
    rows, arrays, dropped = [], [], []
    per_form: dict[str, Counter] = {}
    reasons: Counter = Counter()
    bar = tqdm(total=len(indices), desc="wake", unit="piece", disable=not progress)
    for chunk in chunks(indices, 64 * cfg.batch_size):
        stripped = [tok.strip_sections(cache.ids(i))[0] for i in chunk]
        for i, ids, probs in zip(chunk, stripped, labeller(stripped)):
            result = pseudo_label(tok, ids, probs, cfg.threshold, cfg.min_fraction, cfg.switch_cost)
            row = cache.rows[i]
            key = result.form if result.form in FORM_LABEL_MAP else "other"
            per_form.setdefault(key, Counter())["kept" if result.kept else "dropped"] += 1
            confidence = round(min(result.confidence), 4) if result.confidence else 0.0
            if not result.kept:
                reasons[result.reason] += 1
                dropped.append({"id": row.get("id", i), "path": row.get("path"), "form": result.form,
                                "confidence": confidence, "reason": result.reason})
                continue
            kept = {k: v for k, v in row.items() if k != "n_tokens"}
            kept.update(source=f"pseudo:{name}", original_source=row.get("source"), form=result.form,
                        form_label=FORM_LABEL_MAP[result.form], confidence=confidence,
                        section_confidence=[round(c, 4) for c in result.confidence])
            rows.append(kept)
            arrays.append(result.ids)
        bar.update(len(chunk))
    bar.close()
    write_cache(out, rows, arrays)
    (out / REPORT).write_text("".join(json.dumps(r) + "\n" for r in dropped))
    report = {
        "corpus": str(corpus), "classifier": getattr(labeller, "source", None), "out": str(out),
        "threshold": cfg.threshold, "min_fraction": cfg.min_fraction,
        "pieces": len(indices), "kept": len(rows), "dropped": len(dropped),
        "per_form": {form: {"kept": c["kept"], "dropped": c["dropped"]}
                     for form, c in sorted(per_form.items(), key=lambda kv: FORM_LABEL_MAP.get(kv[0], 99))},
        "dropped_because": dict(reasons),
        "kept_per_split": dict(Counter(r["split"] for r in rows)),
    }
    (out / WAKE_REPORT).write_text(json.dumps(report, indent=1) + "\n")
    return report


# ----------------------------------------------------------------------------- dreams


def dream(generator_dir: str | Path, snippet_corpus: str | Path, out: str | Path, per_form: int = 8,
          forms: Sequence[str] = DREAM_FORMS, max_tokens: int = 1024, batch_size: int = 4, seed: int = 0,
          progress: bool = True) -> dict[str, int]:
    """Pieces the generator writes for each form (prompts cut from real pieces), labelled by their own
    section tokens, into `out` (TokenCache); returns how many were written per form."""
    from cadenza.staria.generate import GenerationConfig, StariaGenerator

    generator = StariaGenerator.from_pretrained(generator_dir)
    tok, cache = generator.tok, TokenCache(snippet_corpus)
    sources = cache.indices("train") or cache.indices()
    if not sources:
        raise ValueError(f"{snippet_corpus}: no pieces to cut prompts from")
    max_tokens = min(max_tokens, generator.model.cfg.max_seq_len - 64)
    rng = np.random.default_rng(seed)
    rows, arrays, written = [], [], Counter()
    jobs = [(form, keys) for form in forms for keys in chunks(range(per_form), batch_size)]
    for n, (form, keys) in enumerate(tqdm(jobs, desc="dream", disable=not progress)):
        prompts = [generator.prompt(form, {letter: cache.ids(int(rng.choice(sources))) for letter in sorted(set(form))})
                   for _ in keys]
        config = GenerationConfig(max_tokens=max_tokens, seed=seed + n)
        for k, ids in zip(keys, generator.generate_ids(form, prompts, config)):
            events, _ = tok.ids_to_events(ids)
            piece = tok.events_to_ids(events)  # canonical tokens (the batch's aligned heads dropped)
            if section_letters(tok, piece) != form:  # a section without a note lost its section token
                continue
            digest = hashlib.sha1(piece.tobytes()).hexdigest()
            rows.append({"id": f"dream-{form}-{k}", "source": f"dream:{generator_dir}",
                         "path": None, "hash": digest, "split": split_of(digest), "form": form,
                         "form_label": FORM_LABEL_MAP[form], "n_notes": len(events)})
            arrays.append(piece)
            written[form] += 1
    write_cache(out, rows, arrays)
    return {form: written[form] for form in forms}


# ----------------------------------------------------------------------------- the loop


def _corpora_override(corpora: list[tuple[Path, float]]) -> str:
    return "data.corpora=" + json.dumps([[str(path), weight] for path, weight in corpora])


def _path_override(key: str, path: Path) -> str:
    return f"{key}={json.dumps(str(path))}"


@dataclass
class WakeSleep:
    """A wake-sleep run: inputs, settings, and where each round's files go (`out/round{r}/...`)."""

    out: Path
    synthetic: Path | None = None  # synthetic corpus (sleep, generate)
    corpus: Path | None = None  # real corpus to pseudo-label (wake; prompts for dreams)
    classifier: Path | None = None  # an exported classifier to use in round 1 instead of sleeping
    classifier_config: Path | None = None
    generator_config: Path | None = None
    classifier_overrides: list[str] = field(default_factory=list)
    generator_overrides: list[str] = field(default_factory=list)
    wake: WakeConfig = field(default_factory=WakeConfig)
    pseudo_weight: float = 1.0  # share of generator samples from pseudo-labelled music (synthetic: 1.0)
    dream_weight: float = 0.5  # share of classifier samples from dreams in rounds >= 2 (synthetic: 1.0)
    dreams_per_form: int = 8
    dream_max_tokens: int = 1024
    resume: bool = False
    seed: int = 0
    progress: bool = True

    def round_dir(self, r: int) -> Path:
        """Directory of round r."""
        return Path(self.out) / f"round{r}"

    def classifier_dir(self, r: int) -> Path:
        """The exported classifier that wakes in round r."""
        if r == 1 and self.classifier is not None:
            return Path(self.classifier)
        return self.round_dir(r) / "classifier" / "model"

    def pseudo_dir(self, r: int) -> Path:
        """The pseudo-labelled corpus of round r."""
        return self.round_dir(r) / "pseudo"

    def generator_dir(self, r: int) -> Path:
        """The exported generator of round r."""
        return self.round_dir(r) / "generator" / "model"

    def dreams_dir(self, r: int) -> Path:
        """Pieces the generator of round r - 1 wrote for round r's sleep."""
        return self.round_dir(r) / "dreams"

    def _need(self, name: str) -> Path:
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"this stage needs --{name}")
        return Path(value)

    def sleep(self, r: int = 1) -> Path:
        """Train round r's classifier (round 1 reuses `classifier` if given); returns its export directory."""
        if r == 1 and self.classifier is not None:
            _say(f"sleep: reusing the classifier in {self.classifier}")
            return Path(self.classifier)
        corpora = [(self._need("synthetic"), 1.0)]
        overrides = [*self.classifier_overrides, _path_override("train.run_dir", self.round_dir(r) / "classifier")]
        if r > 1:
            written = dream(self.generator_dir(r - 1), self._need("corpus"), self.dreams_dir(r),
                            self.dreams_per_form, max_tokens=self.dream_max_tokens, seed=self.seed + r,
                            progress=self.progress)
            _say(f"dream: {sum(written.values())} pieces by the round {r - 1} generator -> {self.dreams_dir(r)}")
            if sum(written.values()):
                corpora.append((self.dreams_dir(r), self.dream_weight))
            overrides.append(_path_override("model.init_from", self.classifier_dir(r - 1)))
        overrides.append(_corpora_override(corpora))
        return train("classifier", self.classifier_config, overrides, resume=self.resume)

    def wake_stage(self, r: int = 1) -> dict[str, Any]:
        """Pseudo-label the real corpus with round r's classifier; returns the report."""
        labeller = SectionLabeller.from_pretrained(self.classifier_dir(r), batch_size=self.wake.batch_size,
                                                   overlap=self.wake.overlap)
        return wake(self._need("corpus"), self.pseudo_dir(r), labeller, self.wake, progress=self.progress)

    def generate(self, r: int = 1) -> Path:
        """Train round r's generator on synthetic + pseudo-labelled music; returns its export directory."""
        pseudo = self.pseudo_dir(r)
        if len(TokenCache(pseudo)) == 0:
            raise ValueError(f"{pseudo}: the wake stage kept no piece; lower --threshold or train the "
                             "classifier longer")
        corpora = [(self._need("synthetic"), 1.0), (pseudo, self.pseudo_weight)]
        overrides = [*self.generator_overrides, _path_override("train.run_dir", self.round_dir(r) / "generator"),
                     _corpora_override(corpora)]
        if r > 1:
            overrides.append(_path_override("model.init_from", self.generator_dir(r - 1)))
        return train("staria", self.generator_config, overrides, resume=self.resume)

    def run(self, stage: str = "all", rounds: int = 1, only_round: int = 1) -> list[dict[str, Any]]:
        """Run one stage of round `only_round`, or (`all`) every stage of rounds 1..`rounds`; returns the
        wake reports."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
        if rounds < 1 or only_round < 1:
            raise ValueError("rounds and round must be >= 1")
        reports = []
        for r in (range(1, rounds + 1) if stage == "all" else [only_round]):
            if stage in ("sleep", "all"):
                _say(f"round {r}: sleep -> {self.sleep(r)}")
            if stage in ("wake", "all"):
                reports.append(self.wake_stage(r))
                _say(f"round {r}: wake kept {reports[-1]['kept']} of {reports[-1]['pieces']} -> {self.pseudo_dir(r)}")
            if stage in ("generate", "all"):
                _say(f"round {r}: generate -> {self.generate(r)}")
        return reports

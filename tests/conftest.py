"""Shared fixtures: a tiny real corpus of Bach chorales and a synthetic corpus built from it; tiny random
speech models; the `slow` marker.

Exporting chorales with music21 is the slow part (~0.35 s each), so the MIDI files are written once into
pytest's cache directory (shared by xdist workers through a file lock, and kept between runs); the
tokenized corpora are rebuilt in each session's temp directory, which takes milliseconds.
"""

from __future__ import annotations

import fcntl
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

CHORALES = (
    "bach/bwv66.6", "bach/bwv269", "bach/bwv4.8", "bach/bwv1.6", "bach/bwv10.7", "bach/bwv101.7",
    "bach/bwv102.7", "bach/bwv103.6", "bach/bwv104.6", "bach/bwv108.6", "bach/bwv11.6", "bach/bwv110.7",
    "bach/bwv111.6", "bach/bwv113.8",
)
# Explicit splits (a hash split of 14 files could leave val or test with fewer than 4 pieces).
SPLIT_OF = ["train"] * 6 + ["val"] * 4 + ["test"] * 4
SPEECH_TOKENIZER_TEXTS = ["Hello there.", "How are you today, my friend?", "It is a fine day for a walk in the park."]


def pytest_configure(config: pytest.Config) -> None:
    """Register the `slow` marker: `pytest -m "not slow"` skips the Whisper and multi-process tests."""
    config.addinivalue_line("markers", "slow: runs Whisper or several processes (deselect with -m 'not slow')")


@pytest.fixture(scope="session")
def chorale_midis(request) -> list[Path]:
    """MIDI files of 14 Bach chorales from music21's corpus (exported once, cached between runs)."""
    cache_dir = Path(request.config.cache.mkdir("cadenza-chorales"))
    paths = [cache_dir / (name.replace("/", "_") + ".mid") for name in CHORALES]
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [(name, path) for name, path in zip(CHORALES, paths) if not path.exists()]
        if missing:
            from music21 import corpus

            for name, path in missing:
                tmp = path.with_suffix(".tmp")
                corpus.parse(name).write("midi", fp=str(tmp))
                tmp.replace(path)
    return paths


@pytest.fixture(scope="session")
def real_corpus(chorale_midis, tmp_path_factory) -> Path:
    """A corpus directory (TokenCache format) of the chorales: 6 train, 4 val, 4 test."""
    from cadenza.staria import StariaTokenizer
    from cadenza.staria.cache import write_cache

    tok = StariaTokenizer()
    rows, arrays = [], []
    for i, (path, split) in enumerate(zip(chorale_midis, SPLIT_OF)):
        events = tok.events(path)
        ids = tok.events_to_ids(events)
        rows.append({"id": path.stem, "source": "music21", "path": str(path),
                     "hash": hashlib.sha1(path.read_bytes()).hexdigest(), "duration_s": events.end_ms / 1000,
                     "n_notes": len(events), "split": split})
        arrays.append(np.asarray(ids))
    root = tmp_path_factory.mktemp("real_corpus")
    write_cache(root, rows, arrays)
    return root


@pytest.fixture(scope="session")
def synthetic_corpus(real_corpus, tmp_path_factory) -> Path:
    """A synthetic corpus from `real_corpus`: 3 train pieces and 1 val/test piece per form, seed 0."""
    from cadenza.staria.synthetic import synthesize

    root = tmp_path_factory.mktemp("synthetic_corpus")
    synthesize(real_corpus, root, per_form=3, seed=0, eval_per_form=1, progress=False)
    return root


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests use tiny models, fastest on one thread; two threads crawl when the other core is busy (and
    `pytest -n 2` already runs one worker per core)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build_tiny_speech_model(out_dir: Path, seed: int = 0, **overrides) -> Path:
    """A random tiny Higgs Audio model + tokenizer directory the engine loads (built in well under a second)."""
    from cadenza.higgs_audio import train as lm_train
    from cadenza.higgs_audio.configuration import HiggsAudioConfig
    from cadenza.higgs_audio.modeling import HiggsAudioModel
    from cadenza.higgs_audio.text import TextTokenizer

    tok = TextTokenizer.build(SPEECH_TOKENIZER_TEXTS)
    config = HiggsAudioConfig.tiny(text_vocab_size=tok.vocab_size, **lm_train.token_ids(tok), **overrides)
    torch.manual_seed(seed)
    return lm_train.save_model(HiggsAudioModel(config), tok, out_dir, step=0)


@pytest.fixture(scope="session")
def build_tiny_speech_model():
    """`build_tiny_speech_model(out_dir, seed=0, **config overrides)`: a random tiny speech model directory."""
    return _build_tiny_speech_model


@pytest.fixture(scope="session")
def tiny_speech_model(tmp_path_factory) -> Path:
    """One random tiny speech model directory for the session (seed 0)."""
    return _build_tiny_speech_model(tmp_path_factory.mktemp("tiny_speech_model"))


@pytest.fixture
def never_stops(engine, monkeypatch):
    """Codebook 0 never samples EOS: a request runs to its max_new_tokens (the untrained test model samples
    EOS now and then: a request that stopped early answered 200 where a timeout was due, CI once; a chunk
    that stopped early left a long-form request short). Needs the test module's `engine` fixture."""
    original, eos = engine.decoder.audio_logits, engine.config.audio_stream_eos_id

    def audio_logits(hidden):
        logits = original(hidden)
        logits[..., 0, eos] = float("-inf")
        return logits

    monkeypatch.setattr(engine.decoder, "audio_logits", audio_logits)

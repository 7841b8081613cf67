"""Real corpora: music21 export, MIDI folder ingest, bad files reported, incremental re-runs, splits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from symusic import Score, Tempo
from typer.testing import CliRunner

from cadenza.staria import StariaTokenizer
from cadenza.staria import corpus
from cadenza.staria.cache import TokenCache, split_of
from cadenza.staria.corpus import (
    ExportJob, build_music21_corpus, ingest_midi_dir, parallel_map, split_abc_tunes,
)

N_PER_SOURCE = 3
REQUIRED = {"id", "source", "path", "hash", "duration_s", "n_notes", "n_tokens", "split"}


def _report(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "report.jsonl").read_text().splitlines() if line]


@pytest.fixture(scope="module")
def m21(tmp_path_factory) -> Path:
    """A music21 corpus with the first 3 pieces of each source."""
    out = tmp_path_factory.mktemp("m21")
    build_music21_corpus(out, sources=("bach", "folk", "palestrina"), workers=2, limit=N_PER_SOURCE,
                         progress=False)
    return out


@pytest.fixture
def midi_folder(m21, tmp_path) -> Path:
    """The music21 MIDI files (any suffix case, nested) plus a duplicate and every kind of bad file."""
    folder = tmp_path / "midi"
    (folder / "nested" / "deeper").mkdir(parents=True)
    files = sorted((m21 / "midi").rglob("*.mid"))
    for i, f in enumerate(files):
        target = [folder / f"{f.stem}.mid", folder / "nested" / f"{f.stem}.MID",
                  folder / "nested" / "deeper" / f"{f.stem}.midi"][i % 3]
        shutil.copy(f, target)
    shutil.copy(files[0], folder / "nested" / "copy_of_first.mid")
    (folder / "empty.mid").write_bytes(b"")
    (folder / "random.mid").write_bytes(np.random.default_rng(0).bytes(3000))
    (folder / "audio.mid").write_bytes(b"RIFF" + (36).to_bytes(4, "little") + b"WAVEfmt " + bytes(32))
    (folder / "header_only.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0")
    silent = Score(480)
    silent.tempos.append(Tempo(0, qpm=100.0))
    silent.dump_midi(str(folder / "silent.mid"))
    (folder / "notes.txt").write_text("not a MIDI suffix: ignored")
    return folder


def test_music21_sources_are_exported_and_tokenized(m21):
    cache = TokenCache(m21)
    assert {row["source"] for row in cache.rows} == {"bach", "folk", "palestrina"}
    for source in ("bach", "folk", "palestrina"):
        rows = [r for r in cache.rows if r["source"] == source]
        assert 1 <= len(rows) <= N_PER_SOURCE  # fewer only if two pieces were identical
    for i, row in enumerate(cache.rows):
        assert REQUIRED <= row.keys()
        path = m21 / row["path"]
        assert path.is_file() and path.is_relative_to(m21 / "midi" / row["source"])
        assert row["n_tokens"] == len(cache.ids(i)) > 0 and row["n_notes"] > 0 and row["duration_s"] > 0
    assert _report(m21) == []


def test_music21_rerun_converts_and_tokenizes_nothing(m21, monkeypatch):
    midis = sorted((m21 / "midi").rglob("*.mid"))
    mtimes = [p.stat().st_mtime_ns for p in midis]
    tokens = (m21 / "tokens.bin").read_bytes()
    calls = []
    monkeypatch.setattr(corpus, "_export", lambda job: calls.append(job))
    monkeypatch.setattr(corpus, "_tokenize", lambda path: calls.append(path))
    summary = build_music21_corpus(m21, sources=("bach", "folk", "palestrina"), workers=0,
                                   limit=N_PER_SOURCE, progress=False)
    assert calls == [] and summary.exported == summary.tokenized == 0
    assert summary.reused == summary.pieces == len(TokenCache(m21))
    assert [p.stat().st_mtime_ns for p in midis] == mtimes
    assert (m21 / "tokens.bin").read_bytes() == tokens


def test_ingest_keeps_good_files_and_reports_bad_ones(m21, midi_folder, tmp_path):
    out = tmp_path / "corpus"
    summary = ingest_midi_dir(midi_folder, out, workers=2, progress=False)
    cache = TokenCache(out)
    good = {p.name for p in midi_folder.rglob("*") if p.suffix.lower() in (".mid", ".midi")} - {
        "copy_of_first.mid", "empty.mid", "random.mid", "audio.mid", "header_only.mid", "silent.mid"}
    assert {Path(r["path"]).name for r in cache.rows} == good
    assert summary.pieces == len(good) == len(list((m21 / "midi").rglob("*.mid")))
    report = {Path(r["path"]).name: r for r in _report(out)}
    assert set(report) == {"copy_of_first.mid", "empty.mid", "random.mid", "audio.mid", "header_only.mid",
                           "silent.mid"}
    assert report["copy_of_first.mid"]["kind"] == "duplicate"
    assert report["silent.mid"]["kind"] == "no notes"
    for name, words in [("empty.mid", "empty"), ("random.mid", "MThd"), ("audio.mid", "WAV"),
                        ("header_only.mid", "header only")]:
        assert report[name]["kind"] == "invalid MIDI"
        assert name in report[name]["reason"] and words in report[name]["reason"]
    assert summary.skipped == {"invalid MIDI": 4, "no notes": 1} and summary.duplicates == 1


def test_cached_ids_equal_tokenize_ids_and_split_is_by_hash(midi_folder, tmp_path):
    out = tmp_path / "corpus"
    ingest_midi_dir(midi_folder, out, workers=2, progress=False)
    cache, tok = TokenCache(out), StariaTokenizer()
    for i, row in enumerate(cache.rows):
        data = Path(row["path"]).read_bytes()
        assert row["hash"] == hashlib.sha1(data).hexdigest()
        assert row["split"] == split_of(row["hash"])
        np.testing.assert_array_equal(cache.ids(i), tok.tokenize_ids(row["path"]))
    # The same files, elsewhere, built serially: the same manifest (ids, hashes, splits) and tokens.
    again = tmp_path / "again"
    ingest_midi_dir(midi_folder, again, workers=0, progress=False)
    assert (again / "manifest.jsonl").read_text() == (out / "manifest.jsonl").read_text()
    assert (again / "tokens.bin").read_bytes() == (out / "tokens.bin").read_bytes()


def test_ingest_rerun_tokenizes_only_new_content(midi_folder, tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    ingest_midi_dir(midi_folder, out, workers=0, progress=False)
    before = {r["id"]: r for r in TokenCache(out).rows}
    tokenized: list[str] = []
    real = corpus._tokenize
    monkeypatch.setattr(corpus, "_tokenize", lambda path: tokenized.append(path) or real(path))

    summary = ingest_midi_dir(midi_folder, out, workers=0, progress=False)
    # Only the bad files (not in the cache) are tried again; every good piece is reused.
    assert sorted(Path(p).name for p in tokenized) == ["audio.mid", "empty.mid", "header_only.mid",
                                                       "random.mid", "silent.mid"]
    assert summary.reused == len(before) and {r["id"]: r for r in TokenCache(out).rows} == before

    tokenized.clear()
    removed = sorted(midi_folder.glob("*.mid"))[0]
    changed = next(p for p in sorted(midi_folder.rglob("*.MID")))
    removed.unlink()
    shutil.copy(changed, midi_folder / "renamed.mid")  # same content, new name: reused
    changed.unlink()
    new_bytes = StariaTokenizer().detokenize(TokenCache(out).ids(0)[:40]).dumps_midi()
    (midi_folder / "new.mid").write_bytes(new_bytes)
    for bad in ("audio.mid", "empty.mid", "header_only.mid", "random.mid", "silent.mid"):
        (midi_folder / bad).unlink()
    summary = ingest_midi_dir(midi_folder, out, workers=0, progress=False)
    assert [Path(p).name for p in tokenized] == ["new.mid"]
    names = {Path(r["path"]).name for r in TokenCache(out).rows}
    assert removed.name not in names and changed.name not in names and {"renamed.mid", "new.mid"} <= names
    assert summary.tokenized == 1 and summary.pieces == len(before) - 1 + 1


def test_a_changed_tokenizer_invalidates_the_cache(midi_folder, tmp_path, monkeypatch):
    out = tmp_path / "corpus"
    first = ingest_midi_dir(midi_folder, out, workers=0, progress=False)
    monkeypatch.setattr(StariaTokenizer, "fingerprint", property(lambda self: "another"))
    again = ingest_midi_dir(midi_folder, out, workers=0, progress=False)
    assert again.reused == 0 and again.pieces == first.pieces
    assert {r["tokenizer"] for r in TokenCache(out).rows} == {"another"}


def test_split_abc_tunes_keeps_the_file_header():
    data = b"% a book of tunes\nL:1/8\n\nX:1\nT:one\nK:C\nCDEF|\n\nX:2\nT:two\nK:G\nGABc|\n"
    tunes = split_abc_tunes(data)
    assert len(tunes) == 2
    assert tunes[0].startswith(b"% a book of tunes\nL:1/8\n\nX:1\n") and b"X:2" not in tunes[0]
    assert tunes[1].endswith(b"X:2\nT:two\nK:G\nGABc|\n")
    assert split_abc_tunes(b"no tunes here\n") == []


def test_abc2midi_failure_is_reported(tmp_path):
    job = ExportJob("folk", "bad.abc#1", tmp_path / "bad.mid", abc=b"X:1\nT:bad\nK:Zz\nabc |]] (((\n")
    kind, reason = corpus._export(job)
    assert kind == "abc2midi failed" and reason.startswith("bad.abc#1: ") and "K:" in reason
    assert not job.out.exists() and list(tmp_path.iterdir()) == []
    tune = b"X:1\nT:ok\nM:4/4\nL:1/4\nK:C\nCDEF|GABc|]\n"
    good = ExportJob("folk", "good.abc#1", tmp_path / "good.mid", abc=tune)
    assert corpus._export(good) is None and len(StariaTokenizer().events(good.out)) == 8


def _dies_on_three(x: int) -> int:
    if x == 3:
        os._exit(1)  # a crash in native code looks like this to the pool
    return x * 10


def test_parallel_map_survives_a_crashing_worker():
    assert parallel_map(_dies_on_three, list(range(6)), workers=2, desc="t", progress=False) == [
        0, 10, 20, None, 40, 50]


def test_cli_exit_status(midi_folder, tmp_path):
    from cadenza.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["data", "ingest", str(midi_folder), str(tmp_path / "ok"), "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "pieces:" in result.output and "invalid MIDI 4" in result.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.mid").write_bytes(b"nope")
    result = runner.invoke(app, ["data", "ingest", str(bad), str(tmp_path / "none"), "--workers", "0"])
    assert result.exit_code == 1

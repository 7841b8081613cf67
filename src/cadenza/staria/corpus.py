"""Real corpora, tokenized once: the music21 corpus shipped in its wheel, or any folder of MIDI files.

Building runs in two stages, each in a process pool with a progress bar:

1. export (music21 corpus only): Bach chorales (MusicXML) and Palestrina (Humdrum) go to MIDI through
   music21, folk tunes (multi-tune ABC files) one MIDI per tune through symusic's bundled `abc2midi`.
   Files land under OUT/midi/<source>/...; a MIDI file that already exists is not converted again.
2. tokenize: every MIDI file is hashed (sha1 of its bytes). A hash already in OUT's manifest reuses its
   cached token ids (if the tokenizer is unchanged: see `StariaTokenizer.fingerprint`); a new one is
   tokenized. A file whose bytes or tokens equal an earlier file's is kept once (the same tune under
   two titles, a collection printed twice).

The result is a `TokenCache` directory (see `cache.py`); every file that was skipped is listed in
`report.jsonl` with the reason, and nothing fails silently. Paths in the manifest and report are relative
to OUT when the MIDI file lies inside it (music21 exports), absolute otherwise (ingested folders); a
report row of the export stage names its music21 corpus file instead ("essenFolksong/han2.abc#374").
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
from tqdm import tqdm

from cadenza.staria.cache import MANIFEST, REPORT, SPLITS, TokenCache, split_of, write_cache
from cadenza.staria.midi import MidiError
from cadenza.staria.tokenizer import StariaTokenizer

MUSIC21_SOURCES = ("bach", "folk", "palestrina")
FOLK_COLLECTIONS = ("airdsAirs", "essenFolksong", "miscFolk", "nottingham-dataset", "oneills1850",
                    "ryansMammoth")
MIDI_SUFFIXES = (".mid", ".midi")
CONVERT_TIMEOUT_S = 120  # one music21 conversion (a chorale takes ~0.2 s)
ABC_TIMEOUT_S = 20  # one abc2midi call (a tune takes ~2 ms)
TOKENIZE_TIMEOUT_S = 120  # one MIDI file


@dataclass(frozen=True)
class ExportJob:
    """One piece of the music21 corpus to write as MIDI: a score file, or one tune of an ABC file."""

    source: str
    origin: str  # where it comes from, relative to the music21 corpus: "bach/bwv269.mxl", "x.abc#12"
    out: Path  # the MIDI file to write
    src: Path | None = None  # score file converted by music21
    abc: bytes | None = None  # one ABC tune (with its file header), converted by abc2midi


@dataclass(frozen=True)
class Piece:
    """A MIDI file that should become one row of the manifest."""

    id: str
    source: str
    path: Path
    origin: str


@dataclass
class CorpusSummary:
    """What a build produced: counts by source and split, what was skipped and why, and how long it took."""

    out_dir: Path
    pieces: int = 0
    tokens: int = 0
    by_source: dict[str, int] = field(default_factory=dict)
    by_split: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)  # reason kind -> count (bad files)
    duplicates: int = 0
    exported: int = 0  # MIDI files converted by this run
    tokenized: int = 0  # pieces tokenized by this run
    reused: int = 0  # pieces whose tokens came from the existing cache
    seconds: float = 0.0

    def line(self) -> str:
        """One line: pieces, tokens, skipped, splits, time."""
        skipped = sum(self.skipped.values())
        splits = " ".join(f"{s} {self.by_split.get(s, 0)}" for s in SPLITS)
        return (f"{self.out_dir}: {self.pieces} pieces, {self.tokens} tokens ({splits}); "
                f"{skipped} skipped, {self.duplicates} duplicates; {self.tokenized} tokenized, "
                f"{self.reused} reused, {self.exported} exported in {self.seconds:.1f} s")


# ---- the music21 corpus ---------------------------------------------------------------------------


def music21_corpus_dir() -> Path:
    """The `corpus` folder inside the installed music21 package."""
    import music21.corpus

    return Path(music21.corpus.__file__).parent


def bach_chorale_files() -> list[Path]:
    """Files of the 371 chorales in Riemenschneider numbering (350 distinct files; some numbers repeat)."""
    from music21 import corpus
    from music21.corpus import chorales

    root = music21_corpus_dir()
    files: list[Path] = []
    for name in dict.fromkeys(chorales.Iterator(returnType="filename")):  # "bach/bwv269"
        # Exact stem first: music21's own lookup is by prefix and also finds "bwv245.37" for "bwv245.3".
        candidates = [root / f"{name}{ext}" for ext in (".mxl", ".xml", ".musicxml", ".krn")]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:  # a few names are prefixes of the file's name ("bwv18.5-l" -> "bwv18.5-lz.mxl")
            work = corpus.getWork(name)
            if isinstance(work, list):
                raise FileNotFoundError(f"music21 chorale {name}: ambiguous files {work}")
            found = Path(work)
        files.append(found)
    return sorted(set(files))


def split_abc_tunes(data: bytes) -> list[bytes]:
    """The tunes of an ABC file (each from its `X:` line to the next), each prefixed by the file header."""
    lines = data.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if line.startswith(b"X:")]
    if not starts:
        return []
    header = b"".join(lines[:starts[0]])
    if header and not header.endswith(b"\n"):
        header += b"\n"
    return [header + b"".join(lines[a:b]) for a, b in zip(starts, starts[1:] + [len(lines)])]


def random_folk_tunes(count: int, seed: int, out_dir: str | Path) -> list[Path]:
    """MIDI files of `count` distinct random folk tunes of the music21 corpus (ABC via abc2midi), written
    to `out_dir`: ready-made material for prompts when the user brings none."""
    root, out_dir = music21_corpus_dir(), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = sorted(f for collection in FOLK_COLLECTIONS for f in (root / collection).rglob("*.abc"))
    rng = np.random.default_rng(seed)
    found: list[Path] = []
    for file_index in rng.permutation(len(files)):
        tunes = split_abc_tunes(files[file_index].read_bytes())
        if not tunes:
            continue
        n = int(rng.integers(len(tunes)))
        out = out_dir / f"{files[file_index].stem}-{n + 1:04d}.mid"
        try:
            _abc_to_midi(tunes[n], out)
        except (RuntimeError, subprocess.TimeoutExpired):
            continue
        found.append(out)
        if len(found) == count:
            return found
    raise RuntimeError(f"only {len(found)} of {count} folk tunes could be converted")


def _export_jobs(source: str, out_dir: Path) -> list[ExportJob]:
    root = music21_corpus_dir()
    midi_dir = out_dir / "midi" / source
    if source == "bach":
        return [ExportJob(source, str(f.relative_to(root)), midi_dir / f"{f.stem}.mid", src=f)
                for f in bach_chorale_files()]
    if source == "palestrina":
        return [ExportJob(source, str(f.relative_to(root)), midi_dir / f"{f.stem}.mid", src=f)
                for f in sorted((root / "palestrina").glob("*.krn"))]
    jobs = []
    for collection in FOLK_COLLECTIONS:
        for abc_file in sorted((root / collection).rglob("*.abc")):
            rel = abc_file.relative_to(root / collection).with_suffix("")
            for n, tune in enumerate(split_abc_tunes(abc_file.read_bytes()), start=1):
                out = midi_dir / collection / f"{rel}-{n:04d}.mid"
                jobs.append(ExportJob(source, f"{abc_file.relative_to(root)}#{n}", out, abc=tune))
    return jobs


def _abc2midi_binary() -> Path:
    import symusic

    return Path(symusic.__file__).parent / "bin" / ("abc2midi.exe" if os.name == "nt" else "abc2midi")


def _abc_to_midi(abc: bytes, out: Path) -> None:
    src, tmp = out.with_name(out.stem + ".tmp.abc"), out.with_name(out.stem + ".tmp.mid")
    try:
        src.write_bytes(abc)
        proc = subprocess.run([str(_abc2midi_binary()), str(src), "-o", str(tmp), "-silent"],
                              capture_output=True, timeout=ABC_TIMEOUT_S)
        # abc2midi exits 0 even on errors: the only sure sign of success is the file it writes.
        if not tmp.exists() or tmp.stat().st_size == 0:
            messages = (proc.stdout + proc.stderr).decode(errors="replace").splitlines()
            errors = [m.strip() for m in messages if "rror" in m] or [m.strip() for m in messages if m.strip()]
            raise RuntimeError("abc2midi wrote no MIDI" + (f" ({errors[0]})" if errors else ""))
        os.replace(tmp, out)
    finally:
        src.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


def _score_to_midi(src: Path, out: Path) -> None:
    from music21 import converter

    tmp = out.with_name(out.stem + ".tmp.mid")
    try:
        converter.parse(src).write("midi", fp=tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def _time_limit(seconds: int) -> Iterator[None]:
    """Raise TimeoutError in the body after `seconds` (Unix, main thread; otherwise no limit)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError(f"timed out after {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _export(job: ExportJob) -> tuple[str, str] | None:
    """Write one job's MIDI file; None on success, else (kind, reason)."""
    tool = "abc2midi" if job.abc is not None else "music21"
    job.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _time_limit(CONVERT_TIMEOUT_S), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if job.abc is not None:
                _abc_to_midi(job.abc, job.out)
            else:
                _score_to_midi(job.src, job.out)
    except (TimeoutError, subprocess.TimeoutExpired):
        limit = ABC_TIMEOUT_S if job.abc is not None else CONVERT_TIMEOUT_S
        return "timeout", f"{job.origin}: {tool} timed out after {limit} s"
    except Exception as err:  # any failure of a converter on one file must not stop the build
        return f"{tool} failed", f"{job.origin}: {tool} failed: {type(err).__name__}: {err}"
    return None


# ---- tokenizing -----------------------------------------------------------------------------------

_TOKENIZER: StariaTokenizer | None = None


def _tokenize(path: str) -> dict:
    """Token ids, note count and duration of one MIDI file, or {"kind", "reason"} if it is unusable."""
    global _TOKENIZER
    tok = _TOKENIZER = _TOKENIZER or StariaTokenizer()
    try:
        with _time_limit(TOKENIZE_TIMEOUT_S):
            events = tok.events(path)
            if len(events) == 0:
                return {"kind": "no notes", "reason": f"{path}: no notes"}
            ids = tok.events_to_ids(events)
    except MidiError as err:
        return {"kind": "invalid MIDI", "reason": str(err)}
    except TimeoutError:
        return {"kind": "timeout", "reason": f"{path}: tokenizing timed out after {TOKENIZE_TIMEOUT_S} s"}
    except Exception as err:  # a tokenizer bug on one file is reported, not fatal
        return {"kind": "tokenizer error", "reason": f"{path}: {type(err).__name__}: {err}"}
    return {"ids": ids, "n_notes": len(events), "duration_s": round(events.end_ms / 1000.0, 3)}


def _map_chunk(fn: Callable, items: Sequence) -> list:
    return [fn(item) for item in items]


def _run_isolated(fn: Callable, item):
    """Run one item in a fresh process, so a crash in native code costs only this item."""
    with ProcessPoolExecutor(max_workers=1) as pool:
        try:
            return pool.submit(fn, item).result()
        except BrokenProcessPool:
            return None


def parallel_map(fn: Callable, items: Sequence, workers: int, desc: str, progress: bool = True) -> list:
    """[fn(item) for item in items] in a pool of `workers` processes (0: in this process), with a bar.

    `fn` must report failures in its result rather than raise. If a worker process dies (a crash in
    native code), the items it may have been running are retried one per process; an item that kills
    its process again gets None as its result.
    """
    results: list = [None] * len(items)
    bar = tqdm(total=len(items), desc=desc, unit="file", disable=not progress or not items,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    if workers <= 0:
        for i, item in enumerate(items):
            results[i] = fn(item)
            bar.update()
        bar.close()
        return results
    size = max(1, min(64, len(items) // (workers * 8)))
    chunks = [range(start, min(start + size, len(items))) for start in range(0, len(items), size)]
    lost: list[int] = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_map_chunk, fn, [items[i] for i in chunk]): chunk for chunk in chunks}
        for future in as_completed(futures):
            chunk = futures[future]
            try:
                for i, result in zip(chunk, future.result()):
                    results[i] = result
            except BrokenProcessPool:
                lost.extend(chunk)
                continue
            bar.update(len(chunk))
    for i in sorted(lost):
        results[i] = _run_isolated(fn, items[i])
        bar.update()
    bar.close()
    return results


# ---- the cache ------------------------------------------------------------------------------------


def _skip(source: str, path: str, kind: str, reason: str) -> dict:
    return {"source": source, "path": path, "kind": kind, "reason": reason}


def _old_cache(out_dir: Path) -> TokenCache | None:
    if not (out_dir / MANIFEST).exists():
        return None
    try:
        return TokenCache(out_dir)
    except Exception as err:  # an unreadable cache is rebuilt, not trusted
        print(f"{out_dir}: existing cache unreadable ({err}); tokenizing everything again", file=sys.stderr)
        return None


def _manifest_path(path: Path, out_dir: Path) -> str:
    try:
        return str(path.resolve().relative_to(out_dir.resolve()))
    except ValueError:
        return str(path.resolve())


def build_cache(out_dir: str | Path, pieces: Sequence[Piece], workers: int = 2, skipped: Sequence[dict] = (),
                progress: bool = True) -> CorpusSummary:
    """Tokenize `pieces` into a TokenCache at out_dir, reusing cached tokens of unchanged files.

    `skipped` lists files that failed before this stage (export); they go into the report with the
    files skipped here. Rows are ordered by piece id.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = list(skipped)
    old = _old_cache(out_dir)
    fingerprint = StariaTokenizer().fingerprint
    old_by_hash = {row["hash"]: i for i, row in enumerate(old.rows)
                   if row.get("tokenizer") == fingerprint} if old else {}

    first_with_hash: dict[str, str] = {}
    todo: list[tuple[Piece, str]] = []
    known: list[tuple[Piece, str]] = []
    for piece in sorted(pieces, key=lambda p: p.id):
        try:
            digest = hashlib.sha1(piece.path.read_bytes()).hexdigest()
        except OSError as err:
            report.append(_skip(piece.source, _manifest_path(piece.path, out_dir), "unreadable",
                                f"{piece.path}: cannot read file ({err.strerror or err})"))
            continue
        if digest in first_with_hash:
            report.append(_skip(piece.source, _manifest_path(piece.path, out_dir), "duplicate",
                                f"{piece.path}: same bytes as {first_with_hash[digest]}"))
            continue
        first_with_hash[digest] = piece.id
        (known if digest in old_by_hash else todo).append((piece, digest))

    results = parallel_map(_tokenize, [str(p.path) for p, _ in todo], workers, "tokenize", progress)
    entries: list[tuple[Piece, str, dict]] = []
    for piece, digest in known:
        row = old.rows[old_by_hash[digest]]
        entries.append((piece, digest, {"ids": np.array(old.ids(old_by_hash[digest])),
                                        "n_notes": row["n_notes"], "duration_s": row["duration_s"]}))
    for (piece, digest), result in zip(todo, results):
        if result is None:
            result = {"kind": "worker crashed", "reason": f"{piece.path}: the tokenizer process crashed"}
        if "ids" in result:
            entries.append((piece, digest, result))
        else:
            where = _manifest_path(piece.path, out_dir)
            report.append(_skip(piece.source, where, result["kind"], result["reason"]))

    rows, arrays, first_with_tokens = [], [], {}
    for piece, digest, result in sorted(entries, key=lambda e: e[0].id):
        token_digest = hashlib.sha1(np.ascontiguousarray(result["ids"], dtype=np.int32).tobytes()).hexdigest()
        if token_digest in first_with_tokens:
            report.append(_skip(piece.source, _manifest_path(piece.path, out_dir), "duplicate",
                                f"{piece.path}: same tokens as {first_with_tokens[token_digest]}"))
            continue
        first_with_tokens[token_digest] = piece.id
        rows.append({"id": piece.id, "source": piece.source, "path": _manifest_path(piece.path, out_dir),
                     "origin": piece.origin, "hash": digest, "duration_s": result["duration_s"],
                     "n_notes": result["n_notes"], "n_tokens": len(result["ids"]), "split": split_of(digest),
                     "tokenizer": fingerprint})
        arrays.append(result["ids"])
    write_cache(out_dir, rows, arrays)
    (out_dir / REPORT).write_text("".join(json.dumps(r) + "\n" for r in report))

    bad = [r for r in report if r["kind"] != "duplicate"]
    return CorpusSummary(
        out_dir=out_dir,
        pieces=len(rows),
        tokens=int(sum(len(a) for a in arrays)),
        by_source=dict(Counter(r["source"] for r in rows)),
        by_split=dict(Counter(r["split"] for r in rows)),
        skipped=dict(Counter(r["kind"] for r in bad)),
        duplicates=len(report) - len(bad),
        tokenized=len(todo),
        reused=len(known),
        seconds=time.perf_counter() - start,
    )


# ---- entry points ---------------------------------------------------------------------------------


def build_music21_corpus(out_dir: str | Path, sources: Sequence[str] = ("bach", "folk"), workers: int = 2,
                         limit: int | None = None, progress: bool = True) -> CorpusSummary:
    """Export music21's Bach chorales / folk tunes / Palestrina to MIDI under out_dir/midi and tokenize them.

    `limit` keeps the first N pieces of each source (for quick tries). A re-run converts only MIDI files
    that do not exist yet and tokenizes only files whose content is not in the cache.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    unknown = [s for s in sources if s not in MUSIC21_SOURCES]
    if unknown:
        raise ValueError(f"unknown music21 source(s) {', '.join(unknown)}; "
                         f"choose from {', '.join(MUSIC21_SOURCES)}")
    jobs: list[ExportJob] = []
    for source in dict.fromkeys(sources):
        jobs += _export_jobs(source, out_dir)[:limit]
    todo = [job for job in jobs if not job.out.exists()]
    failures = parallel_map(_export, todo, workers, "export", progress)
    skipped = []
    for job, failure in zip(todo, failures):
        if failure is None and not job.out.exists():  # parallel_map's None: the worker process died
            failure = ("worker crashed", f"{job.origin}: the converter process crashed")
        if failure:
            skipped.append(_skip(job.source, job.origin, *failure))
    pieces = [Piece(f"{job.source}/{job.out.relative_to(out_dir / 'midi' / job.source).with_suffix('')}",
                    job.source, job.out, job.origin) for job in jobs if job.out.exists()]
    summary = build_cache(out_dir, pieces, workers, skipped, progress)
    summary.exported = len(todo) - len(skipped)
    summary.seconds = time.perf_counter() - start
    if progress:
        print(summary.line(), file=sys.stderr)
    return summary


def find_midi_files(midi_dir: str | Path) -> list[Path]:
    """MIDI files under a folder, recursively (.mid / .midi, any case), sorted."""
    return sorted(p for p in Path(midi_dir).rglob("*") if p.suffix.lower() in MIDI_SUFFIXES and p.is_file())


def ingest_midi_dir(midi_dir: str | Path, out_dir: str | Path, workers: int = 2, source: str | None = None,
                    progress: bool = True) -> CorpusSummary:
    """Tokenize every MIDI file under midi_dir (recursively) into a TokenCache at out_dir.

    `source` names the corpus in the manifest (default: the folder's name). A re-run tokenizes only
    files whose content is not in the cache yet.
    """
    midi_dir = Path(midi_dir)
    if not midi_dir.is_dir():
        raise FileNotFoundError(f"{midi_dir}: not a folder")
    source = source or midi_dir.resolve().name
    pieces = [Piece(f"{source}/{p.relative_to(midi_dir).as_posix()}", source, p, str(p.relative_to(midi_dir)))
              for p in find_midi_files(midi_dir)]
    summary = build_cache(out_dir, pieces, workers, (), progress)
    if progress:
        print(summary.line(), file=sys.stderr)
    return summary

"""The speech worker: a bounded queue in front of one thread that decodes requests in batches.

Requests wait in a queue of at most `max_queue` (a full queue is refused at once: the route answers 503).
The worker thread takes up to `max_batch` waiting requests (having waited `batch_window` for requests that
arrive together) and decodes one chunk of each in a single batched stream; a request with more chunks goes
back to the front of the queue, so long texts and new requests share the next batch (batching at chunk
boundaries: a request that arrives while a batch runs joins the next one). Audio is handed to each request's asyncio queue as soon as it is final. A request whose
client went away or whose deadline passed stops decoding at the next step.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from cadenza.serve.speech_engine import AudioContent, GenerationSettings, HiggsAudioServeEngine, Speech, new_speech

log = logging.getLogger("cadenza.serve")


class QueueFull(Exception):
    """The speech queue holds `max_queue` requests already."""


@dataclass
class SpeechJob:
    """One speech request in flight; its events arrive on `events` as ("audio", samples), then ("done",
    usage) or ("error", (HTTP status, message))."""

    transcript: str
    voice: tuple[AudioContent, str] | None
    scene: str | None
    settings: GenerationSettings
    deadline: float
    loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.get_running_loop)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    speech: Speech | None = None
    usage: dict = field(default_factory=dict)  # token counts, once done

    def cancel(self) -> None:
        """Stop decoding this request (its client disconnected)."""
        self.cancelled = True

    @property
    def stopped(self) -> bool:
        """Cancelled, or past its deadline."""
        return self.cancelled or time.monotonic() > self.deadline

    def stop_reason(self) -> tuple[int, str]:
        """The error event of a stopped request."""
        return (499, "cancelled by the client") if self.cancelled else (504, "the request timed out")

    def send(self, kind: str, value) -> None:
        """Hand an event to the request's event loop (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:  # the loop has closed: nobody is listening any more
            self.cancelled = True


class SpeechWorker:
    """Owns the engine: every engine call happens on this worker's thread."""

    def __init__(self, engine: HiggsAudioServeEngine, max_queue: int = 64, max_batch: int = 16,
                 chunk_words: int = 40, batch_window: float = 0.02, on_audio=None):
        self.engine = engine
        self.batch_window = batch_window  # seconds a new batch waits for requests arriving together
        self.max_queue, self.max_batch, self.chunk_words = max_queue, max_batch, chunk_words
        self.on_audio = on_audio or (lambda seconds: None)
        self._waiting: deque[SpeechJob] = deque()
        self._running = 0
        self._wake = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="cadenza-speech", daemon=True)

    @property
    def sampling_rate(self) -> int:
        """Sample rate of the audio the engine speaks."""
        return self.engine.sampling_rate

    @property
    def depth(self) -> int:
        """Requests waiting or decoding."""
        return len(self._waiting) + self._running

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self) -> None:
        """Let the worker thread end after its current batch."""
        with self._wake:
            self._stop = True
            self._wake.notify()
        self._thread.join(timeout=30)

    def submit(self, job: SpeechJob) -> None:
        """Queue a request; QueueFull when `max_queue` requests are waiting."""
        with self._wake:
            if len(self._waiting) >= self.max_queue:
                raise QueueFull
            self._waiting.append(job)
            self._wake.notify()

    def _take(self) -> list[SpeechJob] | None:
        with self._wake:
            while not self._waiting and not self._stop:
                self._wake.wait()
            deadline = time.monotonic() + self.batch_window
            while len(self._waiting) < self.max_batch and not self._stop and (left := deadline - time.monotonic()) > 0:
                self._wake.wait(left)
            if self._stop:
                return None
            jobs = []
            while self._waiting and len(jobs) < self.max_batch:
                job = self._waiting.popleft()
                if job.stopped:
                    job.send("error", job.stop_reason())
                else:
                    jobs.append(job)
            self._running = len(jobs)
            return jobs

    def _run(self) -> None:
        while (jobs := self._take()) is not None:
            try:
                self._speak([job for job in jobs if self._prepare(job)])
            except Exception as exc:  # a bug, not a bad request: report it and keep serving
                log.exception("speech batch failed")
                for job in jobs:
                    job.send("error", (500, f"internal error: {exc}"))
            finally:
                self._running = 0

    def _prepare(self, job: SpeechJob) -> bool:
        """Plan a new request (reads its voice reference); False, with an error sent, when that fails."""
        if job.speech is not None:
            return True
        try:
            job.speech = new_speech(self.engine, job.transcript, job.voice, job.scene, job.settings, self.chunk_words)
        except ValueError as exc:
            job.send("error", (400, str(exc)))
            return False
        return True

    def _speak(self, jobs: list[SpeechJob]) -> None:
        """Decode the next chunk of every job together, sending audio as it becomes final."""
        if not jobs:
            return
        prompts, settings = zip(*(job.speech.next_prompt() for job in jobs))
        responses = [None] * len(jobs)
        for deltas in self.engine.stream_prompts(list(prompts), list(settings), lambda i: jobs[i].stopped):
            for i, (job, delta) in enumerate(zip(jobs, deltas)):
                if delta.audio is not None and len(delta.audio) and not job.stopped:
                    job.send("audio", delta.audio)
                    self.on_audio(len(delta.audio) / self.sampling_rate)
                responses[i] = delta.response or responses[i]
        for job, response in zip(jobs, responses):
            job.speech.said(response)
        again = [job for job in jobs if not job.speech.done and not job.stopped]
        with self._wake:
            self._waiting.extendleft(reversed(again))
        for job in jobs:
            if job.stopped:
                job.send("error", job.stop_reason())
            elif job.speech.done:
                job.send("done", {key: sum(r.usage.get(key, 0) for r in job.speech.responses)
                                  for key in ("prompt_tokens", "completion_tokens")})

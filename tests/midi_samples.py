"""MIDI files built for tests: multi-track General MIDI with drums, tempo changes and pedal."""

import io

import mido
import numpy as np


def multitrack_midi(seed: int, pedal: bool = True) -> bytes:
    """A General MIDI file with several instruments, drums, tempo changes and sustain pedal."""
    rng = np.random.default_rng(seed)
    mid = mido.MidiFile(ticks_per_beat=int(rng.choice([96, 384, 480, 960])))
    conductor = mido.MidiTrack()
    mid.tracks.append(conductor)
    t = 0
    for _ in range(4):  # tempo changes every few beats
        conductor.append(mido.MetaMessage("set_tempo", tempo=int(rng.integers(300_000, 900_000)), time=t))
        t = int(rng.integers(1, 8)) * mid.ticks_per_beat
    programs = [(0, 0), (1, 33), (2, 48), (3, 73), (4, 25), (9, 0)]  # channel 9 = drums
    for channel, program in programs:
        track = mido.MidiTrack()
        mid.tracks.append(track)
        track.append(mido.Message("program_change", channel=channel, program=program, time=0))
        events = []  # (tick, order, message)
        for _ in range(int(rng.integers(20, 60))):
            start = int(rng.integers(0, 40 * mid.ticks_per_beat))
            length = int(rng.integers(mid.ticks_per_beat // 8, 2 * mid.ticks_per_beat))
            pitch = int(rng.integers(35, 82) if channel == 9 else rng.integers(24, 100))
            vel = int(rng.integers(1, 128))
            events.append((start, 1, mido.Message("note_on", channel=channel, note=pitch, velocity=vel)))
            events.append((start + length, 0, mido.Message("note_off", channel=channel, note=pitch)))
        if pedal and channel == 0:
            for k in range(0, 40, 8):
                down, up = k * mid.ticks_per_beat, (k + 3) * mid.ticks_per_beat
                events.append((down, 2, mido.Message("control_change", channel=0, control=64, value=127)))
                events.append((up, 2, mido.Message("control_change", channel=0, control=64, value=0)))
        events.sort(key=lambda e: (e[0], e[1]))
        now = 0
        for tick, _, msg in events:
            track.append(msg.copy(time=tick - now))
            now = tick
    buf = io.BytesIO()
    mid.save(file=buf)
    return buf.getvalue()


def mido_onsets(data: bytes) -> list[tuple[float, int, bool]]:
    """(onset ms, pitch, is_drum) of every sounding note, timed by mido (independent of symusic)."""
    mid = mido.MidiFile(file=io.BytesIO(data))
    notes, now = [], 0.0
    for msg in mid:  # iterating a MidiFile yields delta times in seconds, tempo map applied
        now += msg.time
        if msg.type == "note_on" and msg.velocity > 0:
            notes.append((now * 1000.0, msg.note, msg.channel == 9))
    return notes

"""Audio response formats of the speech API: wav, mp3, flac, opus (Ogg) and pcm (16-bit mono), with soundfile.

`encode` writes a whole clip. `StreamEncoder` writes a clip as it is generated and returns the bytes that are
final after each push: pcm and wav (a header of unknown length, as streamed wav is) stream sample by
sample; mp3 and opus stream as the encoder fills its frames or Ogg pages; flac is written whole at the end
(its header holds the total length, which a stream cannot go back to fix).
"""

from __future__ import annotations

import io
import struct

import numpy as np
import soundfile as sf

# name -> (content type, soundfile format, subtype)
FORMATS = {
    "wav": ("audio/wav", "WAV", "PCM_16"),
    "mp3": ("audio/mpeg", "MP3", "MPEG_LAYER_III"),
    "flac": ("audio/flac", "FLAC", "PCM_16"),
    "opus": ("audio/ogg", "OGG", "OPUS"),
    "pcm": ("audio/pcm", None, None),
}
# Constant bitrate: a streamed mp3 has no header telling its length, and readers then estimate it from the
# bitrate, which is right only at a constant one (lame's default compression level here gives a wrong one).
MP3_OPTIONS = {"bitrate_mode": "CONSTANT", "compression_level": 0.5}


def content_type(fmt: str) -> str:
    """The HTTP content type of a response format."""
    return FORMATS[fmt][0]


def pcm16(audio: np.ndarray) -> bytes:
    """Little-endian 16-bit samples of float audio in [-1, 1]."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def encode(audio: np.ndarray, sampling_rate: int, fmt: str) -> bytes:
    """A whole clip in a response format."""
    if fmt == "pcm":
        return pcm16(audio)
    _, container, subtype = FORMATS[fmt]
    buffer = io.BytesIO()
    options = MP3_OPTIONS if fmt == "mp3" else {}
    sf.write(buffer, np.asarray(audio, np.float32), sampling_rate, format=container, subtype=subtype, **options)
    return buffer.getvalue()


def streaming_wav_header(sampling_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'unknown length' (0xFFFFFFFF), for a wav sent as it is made."""
    unknown = 0xFFFFFFFF
    return (b"RIFF" + struct.pack("<I", unknown) + b"WAVEfmt "
            + struct.pack("<IHHIIHH", 16, 1, 1, sampling_rate, sampling_rate * 2, 2, 16)
            + b"data" + struct.pack("<I", unknown))


class _AppendSink(io.RawIOBase):
    """A seekable file for soundfile that keeps the bytes appended at its end for a stream to take; writes
    at earlier positions (header fix-ups on close) are kept in the file but never streamed."""

    def __init__(self, skip_first_write: bool):
        super().__init__()
        self.data, self.pos, self.sent = bytearray(), 0, 0
        self.skip_first_write = skip_first_write

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def write(self, chunk) -> int:
        chunk = bytes(chunk)
        if self.skip_first_write:  # lame's placeholder for the VBR tag it writes on close
            self.skip_first_write = False
            self.sent = len(chunk)
        self.data[self.pos:self.pos + len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = (offset, self.pos + offset, len(self.data) + offset)[whence]
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.pos + size
        chunk = bytes(self.data[self.pos:end])
        self.pos += len(chunk)
        return chunk

    def take(self) -> bytes:
        """Bytes appended since the last take."""
        chunk = bytes(self.data[self.sent:])
        self.sent = len(self.data)
        return chunk


class StreamEncoder:
    """Encode audio pushed piece by piece; each call returns the bytes ready to send."""

    def __init__(self, fmt: str, sampling_rate: int):
        self.fmt, self.sampling_rate = fmt, sampling_rate
        self._started = False
        self._pieces: list[np.ndarray] = []  # flac: the whole clip, encoded at close
        self._file = self._sink = None
        if fmt in ("mp3", "opus"):
            _, container, subtype = FORMATS[fmt]
            self._sink = _AppendSink(skip_first_write=fmt == "mp3")
            options = MP3_OPTIONS if fmt == "mp3" else {}
            self._file = sf.SoundFile(self._sink, "w", samplerate=sampling_rate, channels=1, format=container,
                                      subtype=subtype, **options)

    def push(self, audio: np.ndarray) -> bytes:
        """Add samples; return the bytes now final."""
        if self.fmt == "pcm":
            return pcm16(audio)
        if self.fmt == "wav":
            header = b"" if self._started else streaming_wav_header(self.sampling_rate)
            self._started = True
            return header + pcm16(audio)
        if self.fmt == "flac":
            self._pieces.append(audio)
            return b""
        self._file.write(np.asarray(audio, np.float32))
        return self._sink.take()

    def close(self) -> bytes:
        """The stream's last bytes (the encoder's buffered frames, or the whole flac file)."""
        if self.fmt == "wav" and not self._started:
            return self.push(np.zeros(0, np.float32))
        if self.fmt == "flac":
            return encode(np.concatenate(self._pieces) if self._pieces else np.zeros(0, np.float32),
                          self.sampling_rate, "flac")
        if self._file is not None:
            self._file.close()
            return self._sink.take()
        return b""

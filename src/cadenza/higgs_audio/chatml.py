"""ChatML samples of Higgs Audio: messages of text and audio, their JSON form, and their token layout.

A sample is a Llama-3 chat: "<|begin_of_text|>", then per message
"<|start_header_id|>{role}<|end_header_id|>\\n\\n" + content + "<|eot_id|>". Audio stands in the text
stream as one placeholder token between markers; the collator later expands it to the audio's frames.
"""

from __future__ import annotations

import base64
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cadenza.higgs_audio.configuration import IGNORE_INDEX
from cadenza.higgs_audio.text import TextTokenizer

ROLES = ("system", "user", "assistant")
AUDIO_IN_TOKENS = "<|audio_bos|><|AUDIO|><|audio_eos|>"
AUDIO_OUT_TOKENS = "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>"


@dataclass
class AudioContent:
    """An audio clip in a message: a path or URL, or base64 wav in `raw_audio`."""

    audio_url: str = ""
    raw_audio: str | None = None
    offset: float | None = None
    duration: float | None = None
    row_id: int | None = None
    type: str = "audio"

    def cache_key(self) -> tuple:
        """What identifies this clip: its file as it is now (path + mtime) or a hash of its bytes, and its cut."""
        if self.raw_audio:
            source = hashlib.sha1(self.raw_audio.encode()).hexdigest()
        else:
            path = Path(self.audio_url)
            source = (str(path), path.stat().st_mtime_ns if path.is_file() else None)
        return source, self.offset, self.duration

    def waveform(self) -> tuple[np.ndarray | str, int | None]:
        """What an audio tokenizer encodes: (samples, rate), cut to offset/duration if set, or (path, None)."""
        from cadenza.core.audio import read_audio

        if self.raw_audio:
            import soundfile as sf

            wav, sr = sf.read(io.BytesIO(base64.b64decode(self.raw_audio)), dtype="float32")
        elif not self.audio_url:
            raise ValueError("audio content has neither audio_url nor raw_audio")
        elif self.offset or self.duration:
            wav, sr = read_audio(self.audio_url)
        else:
            return self.audio_url, None
        start = int((self.offset or 0.0) * sr)
        stop = None if self.duration is None else start + int(self.duration * sr)
        return wav[start:stop], sr


@dataclass
class TextContent:
    """Text in a message."""

    text: str
    type: str = "text"


ContentItem = str | AudioContent | TextContent


@dataclass
class Message:
    """One turn of the chat."""

    role: str
    content: ContentItem | list[ContentItem]
    recipient: str | None = None


@dataclass
class ChatMLSample:
    """A chat; labels cover the assistant turns whose index is at least `start_index` (None: all)."""

    messages: list[Message]
    start_index: int | None = None
    misc: dict | None = None
    speaker: str | None = None

    @classmethod
    def from_dict(cls, d: dict) -> ChatMLSample:
        """Read the JSON form; a malformed field raises ValueError naming it ("messages[2].content")."""
        if not isinstance(d, dict):
            raise ValueError(f"ChatML sample: expected an object, got {type(d).__name__}")
        messages = d.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValueError("messages: expected a non-empty list of messages")
        return cls(
            messages=[_message_from_dict(m, f"messages[{i}]") for i, m in enumerate(messages)],
            start_index=_optional(d, "start_index", int, "start_index"),
            misc=_optional(d, "misc", dict, "misc"),
            speaker=_optional(d, "speaker", str, "speaker"),
        )

    def to_dict(self) -> dict:
        """The JSON form read by `from_dict` (fields that are None, and an empty audio_url, are left out)."""
        d: dict[str, Any] = {"messages": [_message_to_dict(m) for m in self.messages]}
        for key in ("start_index", "misc", "speaker"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


def _optional(d: dict, key: str, kind: type | tuple[type, ...], path: str) -> Any:
    value = d.get(key)
    # bool is an int in Python, never a valid index, offset or row id here.
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise ValueError(f"{path}: expected {names} or null, got {type(value).__name__} {value!r}")
    return value


def _message_from_dict(m: Any, path: str) -> Message:
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected an object with role and content, got {type(m).__name__}")
    role = m.get("role")
    if role not in ROLES:
        raise ValueError(f"{path}.role: unknown role {role!r}; expected one of {', '.join(ROLES)}")
    content = m.get("content")
    if content is None:
        content = ""
    elif isinstance(content, list):
        content = [_content_from_json(c, f"{path}.content[{j}]") for j, c in enumerate(content)]
    else:
        content = _content_from_json(content, f"{path}.content")
    return Message(role=role, content=content, recipient=_optional(m, "recipient", str, f"{path}.recipient"))


def _content_from_json(c: Any, path: str) -> ContentItem:
    if isinstance(c, str):
        return c
    if not isinstance(c, dict):
        raise ValueError(f"{path}: expected a string or an object with a type, got {type(c).__name__}")
    if c.get("type") == "text":
        if not isinstance(c.get("text"), str):
            raise ValueError(f"{path}.text: text content needs a string 'text'")
        return TextContent(text=c["text"])
    if c.get("type") == "audio":
        audio = AudioContent(
            audio_url=_optional(c, "audio_url", str, f"{path}.audio_url") or "",
            raw_audio=_optional(c, "raw_audio", str, f"{path}.raw_audio"),
            offset=_optional(c, "offset", (int, float), f"{path}.offset"),
            duration=_optional(c, "duration", (int, float), f"{path}.duration"),
            row_id=_optional(c, "row_id", int, f"{path}.row_id"),
        )
        if not audio.audio_url and not audio.raw_audio:
            raise ValueError(f"{path}: audio content needs an audio_url or raw_audio")
        return audio
    raise ValueError(f"{path}.type: expected 'text' or 'audio', got {c.get('type')!r}")


def _message_to_dict(message: Message) -> dict:
    content = message.content
    d: dict[str, Any] = {
        "role": message.role,
        "content": [_content_to_json(c) for c in content] if isinstance(content, list) else _content_to_json(content),
    }
    if message.recipient is not None:
        d["recipient"] = message.recipient
    return d


def _content_to_json(c: ContentItem) -> str | dict:
    if isinstance(c, TextContent):
        return {"type": "text", "text": c.text}
    if isinstance(c, AudioContent):
        fields = {"audio_url": c.audio_url or None, "raw_audio": c.raw_audio, "offset": c.offset,
                  "duration": c.duration, "row_id": c.row_id}
        return {"type": "audio", **{k: v for k, v in fields.items() if v is not None}}
    return c


def _content_items(content: Any, index: int) -> list[TextContent | AudioContent]:
    """The content of message `index` as a list, without empty texts (they have no tokens)."""
    raw = content if isinstance(content, list) else [content]
    items: list[TextContent | AudioContent] = []
    for item in raw:
        if isinstance(item, str):
            item = TextContent(item)
        if not isinstance(item, (TextContent, AudioContent)):
            raise ValueError(f"messages[{index}].content: unsupported content {type(item).__name__} {item!r}")
        if not (isinstance(item, TextContent) and not item.text):
            items.append(item)
    return items


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


def prepare_chatml_sample(
    sample: ChatMLSample, tokenizer: TextTokenizer, add_generation_prompt: bool = False
) -> tuple[list[int], list[int], list[AudioContent], str | None]:
    """Token ids, aligned labels (-100 outside trained assistant turns), audio contents in order, speaker.

    User text is a transcript to speak, so it is tokenized as phonemes; system and assistant text are
    tokenized as written. With `add_generation_prompt` the ids end in an open assistant header; a final
    assistant message without content means the same.
    """
    messages = sample.messages
    if messages and messages[-1].role == "assistant" and not _content_items(messages[-1].content, len(messages) - 1):
        messages, add_generation_prompt = messages[:-1], True
    input_ids = [tokenizer.token_id("<|begin_of_text|>")]
    labels = [IGNORE_INDEX]
    audio_contents: list[AudioContent] = []

    def append(ids: list[int], trained: bool) -> None:
        input_ids.extend(ids)
        labels.extend(ids if trained else [IGNORE_INDEX] * len(ids))

    for index, message in enumerate(messages):
        if message.role not in ROLES:
            raise ValueError(f"messages[{index}].role: unknown role {message.role!r}; expected one of {', '.join(ROLES)}")
        trained = message.role == "assistant" and (sample.start_index is None or index >= sample.start_index)
        append(tokenizer.encode(_header(message.role)), trained=False)
        if message.recipient:
            if message.role != "assistant":
                raise ValueError(f"messages[{index}].recipient: only assistant messages have a recipient")
            append(tokenizer.encode(f"{message.recipient}<|recipient|>"), trained)
        for item in _content_items(message.content, index):
            if isinstance(item, AudioContent):
                audio_contents.append(item)
                append(tokenizer.encode(AUDIO_OUT_TOKENS if message.role == "assistant" else AUDIO_IN_TOKENS), trained)
            else:
                append(tokenizer.encode(item.text, spoken=message.role == "user"), trained)
        append([tokenizer.token_id("<|eot_id|>")], trained)
    if add_generation_prompt:
        append(tokenizer.encode(_header("assistant")), trained=False)
    speaker = sample.speaker if sample.speaker is not None else (sample.misc or {}).get("speaker")
    return input_ids, labels, audio_contents, speaker


def transcript_span(input_ids: list[int], label_ids: list[int], tokenizer: TextTokenizer) -> tuple[int, int] | None:
    """Token span [start, end) of the text spoken by the last trained `<|AUDIO_OUT|>`: the text of the user
    message before it (None when no audio is trained or no user text precedes it)."""
    out_id = tokenizer.token_id("<|AUDIO_OUT|>")
    trained = [i for i, (t, label) in enumerate(zip(input_ids, label_ids)) if t == out_id and label != IGNORE_INDEX]
    return last_user_text(input_ids, trained[-1], tokenizer) if trained else None


def last_user_text(input_ids: list[int], before: int, tokenizer: TextTokenizer) -> tuple[int, int] | None:
    """Token span [start, end) of the text of the last user message before position `before` (None if none):
    the transcript a generation prompt ending at `before` asks to speak."""
    eot = tokenizer.token_id("<|eot_id|>")
    header = tokenizer.encode(_header("user"))
    starts = [i + len(header) for i in range(before - len(header), -1, -1) if input_ids[i:i + len(header)] == header]
    if not starts:
        return None
    start = starts[0]
    end = input_ids.index(eot, start)
    return (start, end) if end > start else None

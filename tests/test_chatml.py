"""Higgs Audio ChatML: JSON form of samples and their Llama-3 token layout with labels."""

from __future__ import annotations

import copy

import pytest

from cadenza.higgs_audio.chatml import (
    IGNORE_INDEX,
    AudioContent,
    ChatMLSample,
    Message,
    TextContent,
    prepare_chatml_sample,
)
from cadenza.higgs_audio.text import TextTokenizer

SCENE = "Generate audio following instruction.<|scene_desc_start|>quiet room<|scene_desc_end|>"
REF_TEXT = "The sun rose over the hills."
TARGET_TEXT = "I paid $5 for 2 books."


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.build([REF_TEXT, TARGET_TEXT, "A quick brown fox."])


def cloning_sample(start_index: int | None = 3) -> ChatMLSample:
    return ChatMLSample(
        messages=[
            Message("system", SCENE),
            Message("user", REF_TEXT),
            Message("assistant", AudioContent(audio_url="ref.wav")),
            Message("user", TextContent(TARGET_TEXT)),
            Message("assistant", AudioContent(audio_url="target.wav", duration=1.5)),
        ],
        start_index=start_index,
        speaker="joe",
    )


def header(tok: TextTokenizer, role: str) -> list[int]:
    return tok.encode(f"<|start_header_id|>{role}<|end_header_id|>\n\n")


def test_cloning_sample_layout_and_labels(tokenizer):
    tok = tokenizer
    ids, labels, audios, speaker = prepare_chatml_sample(cloning_sample(), tok)
    eot = [tok.token_id("<|eot_id|>")]
    audio_out = tok.encode("<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>")
    untrained = (
        [tok.token_id("<|begin_of_text|>")]
        + header(tok, "system") + tok.encode(SCENE) + eot
        + header(tok, "user") + tok.encode(REF_TEXT, spoken=True) + eot
        + header(tok, "assistant") + audio_out + eot
        + header(tok, "user") + tok.encode(TARGET_TEXT, spoken=True) + eot
        + header(tok, "assistant")
    )
    assert ids == untrained + audio_out + eot
    assert labels == [IGNORE_INDEX] * len(untrained) + audio_out + eot
    assert len(audio_out) == 3
    assert [a.audio_url for a in audios] == ["ref.wav", "target.wav"]
    assert speaker == "joe"
    assert tok.decode(tok.encode(TARGET_TEXT, spoken=True)).startswith("aɪ pˈeɪd fˈaɪv dˈɑːlɚz")


def test_labels_cover_every_assistant_turn_without_start_index(tokenizer):
    ids, labels, _, _ = prepare_chatml_sample(cloning_sample(start_index=None), tokenizer)
    trained = [i for i, label in enumerate(labels) if label != IGNORE_INDEX]
    assert [ids[i] for i in trained] == [labels[i] for i in trained]
    assert [tokenizer.decode([ids[i]]) for i in trained] == ["<|audio_out_bos|>", "<|AUDIO_OUT|>", "<|audio_eos|>",
                                                               "<|eot_id|>"] * 2


def test_audio_placeholders_per_role(tokenizer):
    sample = ChatMLSample([
        Message("system", ["Voice:", AudioContent(raw_audio="UklGRg==")]),
        Message("user", AudioContent(audio_url="in.wav")),
        Message("assistant", [TextContent("ok"), AudioContent(audio_url="out.wav")]),
    ])
    ids, _, audios, speaker = prepare_chatml_sample(sample, tokenizer)
    text = tokenizer.decode(ids)
    assert text.count("<|audio_bos|><|AUDIO|><|audio_eos|>") == 2
    assert text.count("<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|>") == 1
    assert text.endswith("<|end_header_id|>\n\nok<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>")
    assert [a.raw_audio or a.audio_url for a in audios] == ["UklGRg==", "in.wav", "out.wav"]
    assert speaker is None


def test_generation_prompt(tokenizer):
    prompt = cloning_sample()
    prompt.messages = prompt.messages[:4]
    ids, labels, audios, _ = prepare_chatml_sample(prompt, tokenizer, add_generation_prompt=True)
    assert ids[-len(header(tokenizer, "assistant")):] == header(tokenizer, "assistant")
    assert tokenizer.decode(ids).endswith("<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")
    assert set(labels) == {IGNORE_INDEX} and len(audios) == 1
    # A final assistant message without content is the same prompt.
    for empty in ("", [], TextContent("")):
        open_turn = copy.deepcopy(prompt)
        open_turn.messages.append(Message("assistant", empty))
        assert prepare_chatml_sample(open_turn, tokenizer)[0] == ids
    without = prepare_chatml_sample(prompt, tokenizer)[0]
    assert without == ids[: len(without)] and without[-1] == tokenizer.token_id("<|eot_id|>")


def test_recipient_follows_the_header(tokenizer):
    sample = ChatMLSample([Message("user", "Hi."), Message("assistant", "Hello.", recipient="tts")])
    ids, labels, _, _ = prepare_chatml_sample(sample, tokenizer)
    assert tokenizer.decode(ids).endswith("<|end_header_id|>\n\ntts<|recipient|>Hello.<|eot_id|>")
    assert tokenizer.decode([x for x in labels if x != IGNORE_INDEX]) == "tts<|recipient|>Hello.<|eot_id|>"
    with pytest.raises(ValueError, match=r"messages\[0\].recipient"):
        prepare_chatml_sample(ChatMLSample([Message("user", "Hi.", recipient="x")]), tokenizer)


def test_speaker_falls_back_to_misc(tokenizer):
    sample = ChatMLSample([Message("user", "Hi.")], misc={"speaker": "awb"})
    assert prepare_chatml_sample(sample, tokenizer)[3] == "awb"


def test_dict_round_trip():
    d = {
        "messages": [
            {"role": "system", "content": "Scene."},
            {"role": "user", "content": {"type": "text", "text": "Hello."}},
            {"role": "assistant", "content": {"type": "audio", "audio_url": "a.wav", "offset": 0.5, "duration": 2.0}},
            {"role": "user", "content": ["Say", {"type": "audio", "raw_audio": "UklGRg==", "row_id": 3}]},
            {"role": "assistant", "content": "", "recipient": "tts"},
        ],
        "start_index": 2,
        "misc": {"source": "test"},
        "speaker": "slt",
    }
    sample = ChatMLSample.from_dict(d)
    assert sample.messages[2].content == AudioContent(audio_url="a.wav", offset=0.5, duration=2.0)
    assert sample.messages[3].content[1] == AudioContent(raw_audio="UklGRg==", row_id=3)
    assert sample.to_dict() == d
    assert ChatMLSample.from_dict(sample.to_dict()) == sample
    assert ChatMLSample.from_dict({"messages": [{"role": "assistant"}]}).messages[0].content == ""


@pytest.mark.parametrize("d, field", [
    ([], "ChatML sample"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, r"messages\[0\].role"),
    ({"messages": [{"role": "user", "content": 5}]}, r"messages\[0\].content"),
    ({"messages": [{"role": "user", "content": ["ok", 5]}]}, r"messages\[0\].content\[1\]"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": {"type": "audio"}}]},
     r"messages\[1\].content: audio content needs"),
    ({"messages": [{"role": "user", "content": {"type": "video"}}]}, r"messages\[0\].content.type"),
    ({"messages": [{"role": "user", "content": {"type": "text"}}]}, r"messages\[0\].content.text"),
    ({"messages": [{"role": "user", "content": {"type": "audio", "audio_url": "a.wav", "duration": "2"}}]},
     r"messages\[0\].content.duration"),
    ({"messages": [{"role": "user", "content": "a"}], "start_index": "1"}, "start_index"),
    ({"messages": [{"role": "user", "content": "a"}], "speaker": 3}, "speaker"),
])
def test_malformed_dicts_name_the_field(d, field):
    with pytest.raises(ValueError, match=field):
        ChatMLSample.from_dict(d)


def test_bad_content_object_in_prepare(tokenizer):
    with pytest.raises(ValueError, match=r"messages\[0\].content"):
        prepare_chatml_sample(ChatMLSample([Message("user", 42)]), tokenizer)

"""HiggsAudioConfig: sizes and special-token ids of the Higgs Audio language model.

In transformers 5 a `PreTrainedConfig` subclass is a dataclass: each annotated field below is a config
key saved to `config.json` by `save_pretrained` and read back by `from_pretrained`.
"""

from __future__ import annotations

from transformers import PretrainedConfig

TOKENIZER_FILE = "tokenizer.json"  # the text tokenizer, beside config.json in a model directory
IGNORE_INDEX = -100  # a label that is not learned (cross_entropy's ignore_index)


class HiggsAudioConfig(PretrainedConfig):
    """A Llama-style decoder with DualFFN layers, audio-code embeddings and an audio head.

    The defaults are the `tiny` test model. Token ids default to the positions of the special tokens
    "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|audio_bos|>", "<|audio_eos|>", "<|audio_out_bos|>",
    "<|AUDIO|>", "<|AUDIO_OUT|>" (ids 0..11); whoever builds a model sets them from the text tokenizer.
    """

    model_type = "cadenza_higgs_audio"

    text_vocab_size: int = 128
    hidden_size: int = 64
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    intermediate_size: int = 128
    audio_intermediate_size: int | None = None  # None: same as intermediate_size
    audio_dual_ffn_layers: list[int] | None = None  # None: every layer; others run the text FFN for audio too
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    audio_num_codebooks: int = 8
    audio_codebook_size: int = 1024
    initializer_range: float = 0.02
    pad_token_id: int = 0
    audio_in_token_id: int = 10  # <|AUDIO|>
    audio_out_token_id: int = 11  # <|AUDIO_OUT|>
    audio_bos_token_id: int = 7  # <|audio_bos|>
    audio_eos_token_id: int = 8  # <|audio_eos|>
    audio_out_bos_token_id: int = 9  # <|audio_out_bos|>
    eot_token_id: int = 6  # <|eot_id|>
    tie_word_embeddings: bool = False
    # Training only. Dropout on the residual branches (attention and MLP outputs), and on the embeddings of
    # input audio frames (Tacotron 2's pre-net dropout: with teacher forcing a model can predict the next frame
    # from the previous ones and recall training clips; noisy past frames make it read the transcript).
    dropout: float = 0.0
    audio_input_dropout: float = 0.0
    # Per-codebook weights of the audio loss (None: equal). Guided attention (Tachibana et al.
    # 2017): on these layers the first `guided_attention_heads` heads are pulled, for every trained audio
    # position, towards the transcript tokens spoken at its frame (a Gaussian of width `guided_attention_sigma`
    # frames; where they are spoken: `aligner.align_corpus`), so that text-to-audio alignment is learned
    # early; None: no guide.
    audio_codebook_loss_weights: list[float] | None = None
    guided_attention_layers: list[int] | None = None
    guided_attention_heads: int = 1
    guided_attention_sigma: float = 4.0
    guided_attention_weight: float = 1.0
    # Transcript pointer: every audio position is also given the embedding of the transcript token spoken at the
    # frame it predicts (where it is spoken: `aligner.align_corpus`, teacher-forced in training), and a pointer
    # head predicts how many sounding tokens the next frame moves on (0..pointer_max_step), which generation
    # samples to move the pointer. A small model then reads the transcript from its input instead of having to
    # find it by attention (attempts 1-3 of the small model barely did: ~0.14 nats of codebook 0 out of >1).
    transcript_pointer: bool = False
    pointer_max_step: int = 3
    pointer_loss_weight: float = 1.0
    # How many of its codebooks (the first K) the engine gives the codec to decode; None: all. The codec decodes any
    # first K (it was trained with quantizer dropout), and a model whose higher codebooks are close to noise speaks
    # more clearly from fewer. Chosen by measurement for a trained model (`cadenza speech export --decode-codebooks`).
    decode_codebooks: int | None = None

    def __post_init__(self, **kwargs) -> None:
        if self.audio_intermediate_size is None:
            self.audio_intermediate_size = self.intermediate_size
        if self.audio_dual_ffn_layers is None:
            self.audio_dual_ffn_layers = list(range(self.num_hidden_layers))
        super().__post_init__(**kwargs)
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        for name in ("audio_dual_ffn_layers", "guided_attention_layers"):
            bad = [i for i in getattr(self, name) or [] if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"{name} {bad} are outside 0..{self.num_hidden_layers - 1}")
        if self.decode_codebooks is not None and not 1 <= self.decode_codebooks <= self.audio_num_codebooks:
            raise ValueError(f"decode_codebooks {self.decode_codebooks}: expected 1..{self.audio_num_codebooks}")
        weights = self.audio_codebook_loss_weights
        if weights is not None and (len(weights) != self.audio_num_codebooks or min(weights) < 0 or not sum(weights)):
            raise ValueError(f"audio_codebook_loss_weights {weights}: expected {self.audio_num_codebooks} "
                             "non-negative weights, not all zero")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads

    @property
    def audio_stream_bos_id(self) -> int:
        """Code that opens every codebook's stream (the delay pattern's left fill)."""
        return self.audio_codebook_size

    @property
    def audio_stream_eos_id(self) -> int:
        """Code that closes every codebook's stream (the delay pattern's right fill)."""
        return self.audio_codebook_size + 1

    @classmethod
    def tiny(cls, **overrides) -> HiggsAudioConfig:
        """A model built in milliseconds, for tests."""
        return cls(**overrides)

    @classmethod
    def small(cls, **overrides) -> HiggsAudioConfig:
        """The shipped size, trainable on one CPU core (~2.4 s per batch of 8 conversations): 12.5M parameters."""
        sizes = {"hidden_size": 256, "num_hidden_layers": 6, "num_attention_heads": 4, "num_key_value_heads": 2,
                 "intermediate_size": 768}
        return cls(**{**sizes, **overrides})

    @classmethod
    def paper(cls, **overrides) -> HiggsAudioConfig:
        """The released Higgs Audio V2 shape: Llama-3.2-3B with DualFFN on all 28 layers."""
        sizes = {"text_vocab_size": 128256, "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
                 "num_key_value_heads": 8, "intermediate_size": 8192, "rope_theta": 500000.0,
                 "max_position_embeddings": 131072}
        return cls(**{**sizes, **overrides})

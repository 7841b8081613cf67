"""The Higgs Audio tokenizer: 24 kHz speech <-> 8 residual codebooks x 1024 at 25 frames/s.

`config` (CodecConfig), `modules` (mel front end, ConvNeXt, iSTFT head), `model` (Codec), `losses`,
`training` (Lightning), `api` (load_audio_tokenizer), `evaluate` (WER / speaker similarity / PESQ).
"""

from cadenza.higgs_audio.codec.api import AudioTokenizer, codec_fingerprint, load_audio_tokenizer

__all__ = ["AudioTokenizer", "codec_fingerprint", "load_audio_tokenizer"]

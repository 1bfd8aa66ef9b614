"""Units + codec in one tokenizer: the SSL unit stream spliced frame by frame in front of the codec streams.

Stream 0 is the unit (semantic) stream, streams 1.. the codec (acoustic) streams, so a model
can predict meaning first and sound after. Both parts must run at the same frame rate::

    codec_ssl:
      type: codec_ssl
      ssl: {type: ssl, kmeans: exp/km500}          # 50 Hz
      codec: {type: codec2}                        # 50 Hz

The codec's frame count decides the length: the unit stream is cut, or padded by repeating
its last unit, by at most ``tolerance`` frames (different padding conventions); a larger
difference is an error naming the utterance's lengths. Decoding uses the codec streams.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speechlm.config import ConfigError
from speechlm.tokenizers.base import TOKENIZERS, AudioTokenizer

log = logging.getLogger(__name__)


@TOKENIZERS.register("codec_ssl")
class CodecSSLTokenizer(AudioTokenizer):
    """``[frames, ssl streams + codec streams]``.

    Args:
        ssl: tokenizer spec of the unit part (usually ``{type: ssl, kmeans: DIR}``).
        codec: tokenizer spec of the codec part (``codec2``, ``hf_codec``, ``espnet_codec``).
        tolerance: frames by which the two parts' lengths may differ before it is an error.
    """

    def __init__(self, ssl: dict[str, Any], codec: dict[str, Any], tolerance: int = 2) -> None:
        from speechlm.tokenizers import build_tokenizer

        self.ssl = build_tokenizer(ssl, where="codec_ssl.ssl")
        self.codec = build_tokenizer(codec, where="codec_ssl.codec")
        for part, tok in (("ssl", self.ssl), ("codec", self.codec)):
            if not isinstance(tok, AudioTokenizer):
                raise ConfigError(f"codec_ssl.{part}: {tok.options.get('type')!r} is not an audio tokenizer")
        if abs(self.ssl.frame_rate - self.codec.frame_rate) > 1e-6:
            raise ConfigError(
                f"codec_ssl: frame rates disagree: ssl {self.ssl.options.get('type')!r} runs at "
                f"{self.ssl.frame_rate:g} Hz, codec {self.codec.options.get('type')!r} at "
                f"{self.codec.frame_rate:g} Hz; "
                f"pick parts with the same frame rate (e.g. 50 Hz units with codec2, or a 50 Hz codec)")
        self.tolerance = int(tolerance)
        self.sample_rate = self.codec.sample_rate

    @property
    def codebook_sizes(self) -> list[int]:
        return [*self.ssl.codebook_sizes, *self.codec.codebook_sizes]

    @property
    def frame_rate(self) -> float:
        return self.codec.frame_rate

    def splice(self, units: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Units ``[n, a]`` and codes ``[m, b]`` -> ``[m, a + b]`` (units fitted to ``m`` frames)."""
        n, m = len(units), len(codes)
        if abs(n - m) > self.tolerance:
            raise ValueError(f"codec_ssl: the ssl part gave {n} frames and the codec part {m} for the same audio "
                             f"(tolerance {self.tolerance}); are the two frame rates really equal?")
        if n >= m:
            units = units[:m]
        elif n:
            units = np.concatenate([units, np.repeat(units[-1:], m - n, axis=0)])
        else:
            units = np.zeros((m, units.shape[1]), np.int32)
        return np.concatenate([units, codes], axis=1).astype(np.int32)

    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        return self.splice(self.ssl.encode(wav, sample_rate), self.codec.encode(wav, sample_rate))

    def encode_batch(self, wavs: Sequence[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        units = self.ssl.encode_batch(wavs, sample_rate)
        codes = self.codec.encode_batch(wavs, sample_rate)
        return [self.splice(u, c) for u, c in zip(units, codes)]

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Decode the codec streams (the unit stream is dropped)."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_streams:
            raise ValueError(f"codec_ssl: expected tokens [frames, {self.n_streams}], got {tokens.shape}")
        return self.codec.decode(tokens[:, self.ssl.n_streams:])

    def files(self) -> list[Path]:
        return [*self.ssl.files(), *self.codec.files()]

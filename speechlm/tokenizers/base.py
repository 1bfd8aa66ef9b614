"""The tokenizer interface shared by every modality.

A tokenizer turns one value (a string, or a waveform) into an int32 array ``[frames, streams]``
with ids local to the tokenizer (stream ``k`` takes values in ``[0, codebook_sizes[k])``), and
back. Text tokenizers have one stream; audio codecs have several.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from speechlm.registry import Registry

TOKENIZERS: Registry[type["Tokenizer"]] = Registry("tokenizer", entry_points="speechlm.tokenizers")


class Tokenizer(abc.ABC):
    """Base class. Subclasses are registered with ``@TOKENIZERS.register("name")``."""

    modality: str = "text"
    #: Options this tokenizer was built with (saved to ``tokenizers.yaml`` when packing).
    options: dict[str, Any]
    #: ``rows_of`` in ``tokenizers.yaml`` (any type): the tokenizer whose vocabulary rows this one's
    #: streams of the same name reuse (:meth:`speechlm.vocab.Vocabulary.add_tokenizer`), or None.
    rows_of: str | None = None

    @property
    @abc.abstractmethod
    def codebook_sizes(self) -> list[int]:
        """Vocabulary size of each stream."""

    @property
    def n_streams(self) -> int:
        return len(self.codebook_sizes)

    @property
    def stream_names(self) -> list[str]:
        """A name per stream; streams of one name share rows under ``rows_of``."""
        return [f"s{k}" for k in range(self.n_streams)]

    @property
    def frame_rate(self) -> float | None:
        """Frames per second for audio tokenizers; None for text."""
        return None

    @property
    def ordinal_fields(self) -> list[list[int]] | None:
        """Per stream, the bit widths of the ordinal fields its token packs (first field in the high
        bits; a field's index is ordered: index 10 is between 9 and 11, as a quantizer's levels),
        or None: tokens are categories. Decoding by a field's expected value or median
        (``DecodeConfig.ordinal``) needs it."""
        return None

    @abc.abstractmethod
    def encode(self, value: Any) -> np.ndarray:
        """One value -> int32 ``[frames, streams]``."""

    @abc.abstractmethod
    def decode(self, tokens: np.ndarray) -> Any:
        """int ``[frames, streams]`` (or ``[frames]`` for one stream) -> value."""

    def files(self) -> list[Path]:
        """Files the tokenizer needs (copied into packed models)."""
        return []


class TextTokenizer(Tokenizer):
    """Text in, one stream of ids out."""

    modality = "text"

    @staticmethod
    def _column(tokens: np.ndarray) -> list[int]:
        tokens = np.asarray(tokens)
        if tokens.ndim == 2:
            tokens = tokens[:, 0]
        return [int(t) for t in tokens]


class AudioTokenizer(Tokenizer):
    """Waveforms in, ``[frames, streams]`` codes out; decodes back to a waveform."""

    modality = "audio"
    sample_rate: int
    device: str = "cpu"

    @property
    @abc.abstractmethod
    def frame_rate(self) -> float:
        ...

    @abc.abstractmethod
    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:  # type: ignore[override]
        """Mono float waveform (any rate; resampled inside) -> int32 ``[frames, streams]``."""

    def encode_batch(self, wavs: Sequence[np.ndarray], sample_rate: int | None = None) -> list[np.ndarray]:
        """Encode several waveforms; codecs that batch on a device override this."""
        return [self.encode(w, sample_rate) for w in wavs]

    #: True when encoding needs :meth:`encode_file` (a file beside the audio), so no batching
    needs_path: bool = False

    def encode_file(self, wav: np.ndarray, sample_rate: int | None, source) -> np.ndarray:
        """Encode ``wav`` read from ``source`` (its wav.scp value); a tokenizer that reads a file
        beside the audio (an alignment) overrides this, the others encode the waveform."""
        return self.encode(wav, sample_rate)

    @abc.abstractmethod
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """``[frames, streams]`` -> float32 waveform at :attr:`sample_rate`."""

    #: precision of the resampling kernel (see :func:`speechlm.data.audio.resample`); a tokenizer
    #: keeps the one its archives were made with, so its tokens do not move
    resample_kernel: str = "float32"

    def prepare(self, wav: np.ndarray, sample_rate: int | None) -> np.ndarray:
        """Mono float32 at this tokenizer's rate (torchaudio resampling)."""
        from speechlm.data.audio import resample, to_mono

        wav = to_mono(np.asarray(wav, dtype=np.float32))
        return resample(wav, sample_rate or self.sample_rate, self.sample_rate, self.resample_kernel)

"""Codec 2 frames led by a phone stream: which phone each 20 ms frame speaks.

A TTS model that generates Codec 2 frames must find out, frame by frame, where in the text it is;
the mini recipe's models do not (teacher forced, another sentence's phones cost them nothing:
``speechlm tts-diagnose``). This tokenizer puts that in the target itself: stream 0 is the phone
spoken in the frame (from the alignment beside the wav, ``<name>.phn``, that
:mod:`speechlm.data.espeak_align` writes for espeak-ng speech), streams 1.. are Codec 2's. With the
delay pattern the model writes each frame's phone first, so it decides the durations itself
(moving to the next phone of the text, or staying) and every Codec 2 field of the frame then
reads which phone it belongs to. Decoding drops the phone stream.

Encoding needs the alignment, so it reads the wav's path (:meth:`encode_file`; the data stages and
decoding's speaker prompts pass it); a waveform alone cannot be encoded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS
from speechlm.tokenizers.codec2 import Codec2StreamDecoder, Codec2Tokenizer

#: The phones espeak-ng's English voices emit (IPA, as its phoneme events spell them); id 0 is
#: silence (no phone), id 1 any phone not listed.
PHONES = (
    ["<sil>", "<unk>"]
    + "n t ɪ ə s d m ɹ ð l ɛ k z f eɪ aɪ iː p æ w v ʌ ɚ b i oʊ ɑː uː ɾ ɔ ɡ ᵻ ɔːɹ ŋ ɜː ɐ h θ ɔː ɑːɹ "
      "oːɹ əl ʃ tʃ dʒ ʊ aʊ ɪɹ j iə ɛɹ ʒ oː ʔ n̩".split()
    + "ɒ əʊ eə ʊə ɪə aɪə aʊə a e o r x ɑ ɜ u ɔɪ ɬ ç ʊɹ aɪɚ aɪʊ ɑ̃ ɛː".split()
)


@TOKENIZERS.register("codec2_phones")
class Codec2PhonesTokenizer(Codec2Tokenizer):
    """Stream 0: the phone of each frame (:data:`PHONES`), then the Codec 2 streams of ``layout``."""

    needs_path = True  # the alignment is found next to the wav

    def __init__(self, mode: int = 3200, layout: str = "grouped") -> None:
        super().__init__(mode, layout)
        self.phones = list(PHONES)
        self.phone_index = {p: i for i, p in enumerate(self.phones)}

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(self.phones), *super().codebook_sizes]

    @property
    def stream_names(self) -> list[str]:
        return ["phone", *super().stream_names]

    @property
    def ordinal_fields(self) -> list[list[int]] | None:
        fields = super().ordinal_fields
        return None if fields is None else [[], *fields]  # phones are not ordered

    def frame_phones(self, phones: list[tuple[float, float, str]], n_frames: int) -> np.ndarray:
        """The phone id of each frame: the phone under the frame's centre, else silence."""
        centres = (np.arange(n_frames) + 0.5) / self.frame_rate
        ids = np.zeros(n_frames, np.int32)
        for start, end, phone in phones:
            ids[(centres >= start) & (centres < end)] = self.phone_index.get(phone, 1)
        return ids

    def encode(self, wav: np.ndarray, sample_rate: int | None = None) -> np.ndarray:
        raise ValueError("codec2_phones encodes a wav file with its alignment (<name>.phn beside it), "
                         "not a bare waveform; use codec2 for audio without one")

    def encode_file(self, wav: np.ndarray, sample_rate: int | None, source: str | Path) -> np.ndarray:
        """Codec 2 tokens of ``wav`` with the phones of the alignment beside ``source`` as stream 0."""
        from speechlm.data.espeak_align import phn_path, read_phn

        if not isinstance(source, (str, Path)) or str(source).rstrip().endswith("|"):
            raise ValueError(f"codec2_phones: the audio must be a wav file with its alignment beside it, got {source!r}")
        phn = phn_path(source)
        if not phn.is_file():
            raise FileNotFoundError(f"{source}: no phone alignment {phn} (local/data.sh --align true writes them)")
        codes = super().encode(wav, sample_rate)
        return np.concatenate([self.frame_phones(read_phn(phn), len(codes))[:, None], codes], 1)

    def _codec_part(self, tokens: np.ndarray) -> np.ndarray:
        tokens = np.asarray(tokens)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_streams:
            raise ValueError(f"codec2_phones: expected tokens [frames, {self.n_streams}], got {tokens.shape}")
        return tokens[:, 1:]

    def stream_decoder(self) -> Codec2StreamDecoder:
        return _PhonesStreamDecoder(self)


class _PhonesStreamDecoder(Codec2StreamDecoder):
    """Streaming decoding of :class:`Codec2PhonesTokenizer` frames (the phone stream dropped)."""

    def __init__(self, tok: Codec2PhonesTokenizer) -> None:
        self.outer = tok
        super().__init__(Codec2Tokenizer(tok.mode, tok.layout))

    def push(self, tokens: np.ndarray) -> np.ndarray:
        return super().push(self.outer._codec_part(tokens))

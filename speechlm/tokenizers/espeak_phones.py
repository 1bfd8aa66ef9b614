"""Text -> the phones espeak-ng speaks for it, in the inventory of the ``codec2_phones`` phone stream.

The ``g2p`` tokenizer spells espeak-ng's IPA character by character (stress marks and word breaks
included); this one gives the phones themselves, one token each, exactly as espeak-ng's phoneme
events name them when it speaks the text: the sequence a ``codec2_phones`` target's phone stream
walks through for espeak-ng speech. Decoding can then hold that stream to the text's phones in
order (``follow_phones``, :mod:`speechlm.infer.follow`).
"""
from __future__ import annotations

import functools

from speechlm.tokenizers.base import TOKENIZERS
from speechlm.tokenizers.phone_list import PhoneListTokenizer


@TOKENIZERS.register("espeak_phones")
class EspeakPhonesTokenizer(PhoneListTokenizer):
    """The phones of ``voice`` (an espeak-ng voice or language: ``en-us``) for a text; ids are
    :data:`~speechlm.tokenizers.codec2_phones.PHONES` (silence is never emitted; 1 = a phone not listed)."""

    def __init__(self, voice: str = "en-us", cache_size: int = 100_000) -> None:
        super().__init__()
        self.voice = voice
        self._phonemize = functools.lru_cache(maxsize=cache_size)(self._speak)

    def _speak(self, text: str) -> tuple[str, ...]:
        from speechlm.data.espeak_align import synthesize

        return tuple(p for _, _, p in synthesize(text, self.voice)[2])

    def phonemes(self, value: str) -> list[str]:
        """The phones espeak-ng speaks for ``value``."""
        return list(self._phonemize(value.strip()))

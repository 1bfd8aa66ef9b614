"""Spelled phones -> ids of the ``codec2_phones`` inventory: for a condition whose phones are given.

``espeak_phones`` spells a text in one voice's accent (``en-us``); a corpus of many accents speaks
other phones for the same words (for "there ... chance" espeak-ng's ``en-029`` says
``d eə ... tʃ aa n s`` where ``en-us`` says ``ð ɛ ... tʃ æ n s``),
so a phone-led target's phone stream would walk through phones its condition does not hold. When
the data preparation knows the phones each utterance speaks (``mini_espeak``'s ``local/data.sh
--align true`` writes them, one line per utterance, to ``data/<set>/phones``), this tokenizer reads
them: space-separated phone names, each one token (1 = a phone not in the inventory).
"""
from __future__ import annotations

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, TextTokenizer
from speechlm.tokenizers.codec2_phones import PHONES


@TOKENIZERS.register("phone_list")
class PhoneListTokenizer(TextTokenizer):
    """Space-separated phone names -> :data:`~speechlm.tokenizers.codec2_phones.PHONES` ids."""

    def __init__(self) -> None:
        self.phones = list(PHONES)
        self.phone_index = {p: i for i, p in enumerate(self.phones)}

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(self.phones)]

    def phonemes(self, value: str) -> list[str]:
        """The phones ``value`` spells."""
        return value.split()

    def encode(self, value: str) -> np.ndarray:
        ids = [self.phone_index.get(p, 1) for p in self.phonemes(value)]
        return np.asarray(ids, dtype=np.int32).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> str:
        return " ".join(self.phones[i] for i in self._column(tokens))

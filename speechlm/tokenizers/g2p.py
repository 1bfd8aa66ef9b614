"""Offline grapheme-to-phoneme with espeak-ng: text -> IPA phone symbols (one stream).

``g2p_en`` needs an nltk download that fails offline, so we call the ``espeak-ng`` binary
(Debian package ``espeak-ng``). Phones are IPA characters (with length and stress marks as
their own symbols), words separated by ``▁`` and clauses by ``|``.
"""
from __future__ import annotations

import functools
import shutil
import subprocess

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, TextTokenizer

# Closed inventory of what espeak-ng emits for English; anything else maps to <unk> (id 0).
_INVENTORY = (
    ["<unk>", "▁", "|", "ˈ", "ˌ", "ː"]
    + list("abdefhijklmnoprstuvwxz")
    + list("æçðŋɐɑɒɔəɚɛɜɝɡɪɬɹɾʃʊʌʒʔθᵻχɫʲɟɲʎʁɣβɕʑɨʉɯɤøœɶʏʝɦʋɰ")
    + list("ɓɗʄɠʛʘǀǃǂǁ̃")
)


@TOKENIZERS.register("g2p")
class EspeakG2PTokenizer(TextTokenizer):
    """English (or any espeak-ng ``language``) phones from text."""

    def __init__(self, language: str = "en-us", cache_size: int = 100_000) -> None:
        self.language = language
        self.espeak = shutil.which("espeak-ng")
        if self.espeak is None:
            raise RuntimeError("espeak-ng is not installed: run `apt-get install espeak-ng` (tools/install.sh does it as root)")
        self.symbols = list(_INVENTORY)
        self.index = {s: i for i, s in enumerate(self.symbols)}
        self._phonemize = functools.lru_cache(maxsize=cache_size)(self._run_espeak)

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(self.symbols)]

    def _run_espeak(self, text: str) -> str:
        out = subprocess.run(
            [self.espeak, "-q", "--ipa", "-v", self.language, "--", text],
            capture_output=True, text=True, check=True,
        )
        return out.stdout

    def phonemes(self, text: str) -> list[str]:
        """The phone symbols of ``text``."""
        ipa = self._phonemize(text.strip())
        syms: list[str] = []
        for clause in ipa.strip().splitlines():
            if syms:
                syms.append("|")
            for w, word in enumerate(clause.split()):
                if w:
                    syms.append("▁")
                syms.extend(c for c in word if c != "\u200d")
        return syms

    def encode(self, value: str) -> np.ndarray:
        ids = [self.index.get(s, 0) for s in self.phonemes(value)]
        return np.asarray(ids, dtype=np.int32).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> str:
        out = "".join(self.symbols[i] for i in self._column(tokens))
        return out.replace("▁", " ").replace("|", " | ")

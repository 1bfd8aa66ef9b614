"""Codec 2 frames as fields: stream tokens <-> the quantizer indices of voicing, pitch, energy and
the 10 LSP deltas (natural order, Gray code undone, as :mod:`speechlm.tokenizers.codec2` tokenizes),
and the expected value of each field under a model's distribution over a stream.

A ``grouped`` stream packs its fields high bits first (``lsp1+lsp2`` = ``lsp1 * 32 + lsp2``), so a
field's distribution is the stream's marginal over the other fields of the stream.

Example:
    >>> f = CodecFields.from_layout("grouped")
    >>> f.split(np.array([[3, 40, 10, 33, 0, 0, 0, 0]]))["lsp2"]
    array([1])
"""
from __future__ import annotations

import numpy as np

from speechlm.tokenizers.codec2 import FIELDS_3200, LAYOUTS


class CodecFields:
    """Fields of the streams of a Codec 2 field layout (``grouped`` or ``fields``)."""

    def __init__(self, streams: list[list[str]]) -> None:
        bits = dict(FIELDS_3200)
        unknown = [n for s in streams for n in s if n not in bits]
        if unknown:
            raise ValueError(f"codec fields: unknown field {unknown[0]!r}; fields are {', '.join(bits)}")
        self.streams = [[(n, bits[n]) for n in s] for s in streams]
        present = {n for s in streams for n in s}
        #: field names in frame order (voicing1, voicing2, pitch, energy, lsp1..lsp10)
        self.names = [n for n, _ in FIELDS_3200 if n in present]
        self.levels = {n: 1 << bits[n] for n in self.names}

    @classmethod
    def from_layout(cls, layout: str) -> "CodecFields":
        if layout not in LAYOUTS:
            raise ValueError(f"codec fields: layout {layout!r} has no fields (one of {', '.join(LAYOUTS)})")
        return cls(LAYOUTS[layout])

    @classmethod
    def of(cls, tokenizer) -> "CodecFields | None":
        """The fields of a tokenizer's streams, None when its tokens are not Codec 2 fields."""
        from speechlm.tokenizers.codec2 import Codec2Tokenizer

        if (isinstance(tokenizer, Codec2Tokenizer) and tokenizer.layout in LAYOUTS
                and tokenizer.n_streams == len(LAYOUTS[tokenizer.layout])):  # not with a phone stream
            return cls.from_layout(tokenizer.layout)
        return None

    @property
    def n_streams(self) -> int:
        return len(self.streams)

    def split(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Local tokens ``[F, streams]`` -> field name -> natural indices ``[F]``."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.shape[1] != self.n_streams:
            raise ValueError(f"codec fields: expected tokens [frames, {self.n_streams}], got {tokens.shape}")
        out = {}
        for k, fields in enumerate(self.streams):
            low = 0
            for name, bits in reversed(fields):
                out[name] = (tokens[:, k] >> low) & ((1 << bits) - 1)
                low += bits
        return out

    def join(self, fields: dict[str, np.ndarray]) -> np.ndarray:
        """Field name -> indices ``[F]`` -> local tokens ``[F, streams]`` (the inverse of :meth:`split`)."""
        n = len(fields[self.names[0]])
        out = np.zeros((n, self.n_streams), dtype=np.int64)
        for k, stream in enumerate(self.streams):
            for name, bits in stream:
                v = np.asarray(fields[name], dtype=np.int64)
                if len(v) and (v.min() < 0 or v.max() >= 1 << bits):
                    raise ValueError(f"codec fields: {name} index out of range [0, {1 << bits})")
                out[:, k] = (out[:, k] << bits) | v
        return out

    def marginals(self, probs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Per stream probabilities ``[F, 2**bits]`` over its local tokens -> field name -> the
        field's marginal ``[F, levels]``."""
        out = {}
        for k, fields in enumerate(self.streams):
            p = np.asarray(probs[k], dtype=np.float64)
            shape = [p.shape[0], *[1 << b for _, b in fields]]
            if p.shape[1] != int(np.prod(shape[1:])):
                raise ValueError(f"codec fields: stream {k} has {p.shape[1]} columns, its fields {shape[1:]}")
            p = p.reshape(shape)
            for i, (name, _) in enumerate(fields):
                other = tuple(a + 1 for a in range(len(fields)) if a != i)
                out[name] = p.sum(axis=other) if other else p
        return out

    def expected(self, probs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """Field name -> the expected natural index ``[F]`` (float) under ``probs`` (see :meth:`marginals`)."""
        return {n: m @ np.arange(m.shape[1], dtype=np.float64) for n, m in self.marginals(probs).items()}

    def expected_tokens(self, probs: list[np.ndarray]) -> np.ndarray:
        """Tokens ``[F, streams]`` of every field's expected index, rounded (voicing: p >= 0.5)."""
        exp = self.expected(probs)
        return self.join({n: np.clip(np.floor(exp[n] + 0.5), 0, self.levels[n] - 1).astype(np.int64)
                          for n in self.names})


__all__ = ["CodecFields"]

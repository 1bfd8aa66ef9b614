"""A Hugging Face tokenizer from a local directory (for pretrained LLM backbones)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from speechlm.tokenizers.base import TOKENIZERS, TextTokenizer


@TOKENIZERS.register("hf")
class HFTextTokenizer(TextTokenizer):
    """``AutoTokenizer.from_pretrained(path)`` with no network; ids equal the LLM's own ids."""

    path_options = ("path",)

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        if not Path(path).is_dir():
            raise FileNotFoundError(f"Hugging Face tokenizer directory not found: {path}")
        self.path = path
        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)

    @property
    def codebook_sizes(self) -> list[int]:
        return [len(self.tok)]

    def encode(self, value: str) -> np.ndarray:
        ids = self.tok.encode(value, add_special_tokens=False)
        return np.asarray(ids, dtype=np.int32).reshape(-1, 1)

    def decode(self, tokens: np.ndarray) -> str:
        return self.tok.decode(self._column(tokens), skip_special_tokens=True)

    def files(self) -> list[Path]:
        weights = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack")
        return sorted(p for p in Path(self.path).iterdir() if p.is_file() and not p.name.endswith(weights))

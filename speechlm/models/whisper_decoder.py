"""Whisper's text decoder in torch, with the weights of a CTranslate2 Whisper model.

CTranslate2 runs Whisper fast but cannot train it; this module holds the decoder's variables
under their CTranslate2 names, computes what CTranslate2's decoder computes (pre-norm layers:
causal self-attention, cross-attention over the encoder output, GELU MLP; logits tied to the
token embedding), and hands the trained weights back (:meth:`variables`), so a fine-tuned decoder
is written into a ``model.bin`` the runtime loads as before (``speechlm finetune-whisper``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

PREFIX = "decoder/"


class WhisperDecoder(nn.Module):
    """The decoder of a CTranslate2 ``WhisperSpec`` model (its float variables under ``decoder/``)."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        super().__init__()
        names = [k for k in variables if k.startswith(PREFIX) and np.issubdtype(variables[k].dtype, np.floating)]
        if f"{PREFIX}embeddings/weight" not in names:
            raise ValueError("not a Whisper model: no decoder/embeddings/weight among its variables")
        self.names = names
        # '/' is not allowed in parameter names; '__' does not occur in CTranslate2's
        self.params = nn.ParameterDict({k.replace("/", "__"): nn.Parameter(torch.from_numpy(
            variables[k].astype(np.float32))) for k in names})
        self.n_layers = sum(k.endswith("self_attention/linear_0/weight") for k in names)
        self.n_heads = int(variables[f"{PREFIX}num_heads"])

    def _w(self, name: str) -> torch.Tensor:
        return self.params[(PREFIX + name).replace("/", "__")]

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self._w(f"{name}/gamma"), self._w(f"{name}/beta"))

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}/weight"), self._w(f"{name}/bias"))

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2)

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        b, h, t, d = x.shape
        return x.transpose(1, 2).reshape(b, t, h * d)

    def embedding(self) -> torch.Tensor:
        return self._w("embeddings/weight")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Hidden states (after the final norm) -> logits over the tokens (tied embedding)."""
        return hidden @ self.embedding().T

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor | None = None,
                hidden: bool = False) -> torch.Tensor:
        """``tokens`` [B, T] and the encoder output ``memory`` [B, S, D] -> logits [B, T, V] (or
        the final hidden states [B, T, D] with ``hidden``). ``memory_mask`` [B, S] is True where
        ``memory`` holds a frame (batches of clips of several lengths)."""
        b, t = tokens.shape
        x = F.embedding(tokens, self.embedding()) + self._w("position_encodings/encodings")[:t]
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        for i in range(self.n_layers):
            layer = f"layer_{i}"
            q, k, v = self._linear(self._norm(x, f"{layer}/self_attention/layer_norm"),
                                   f"{layer}/self_attention/linear_0").chunk(3, dim=-1)
            a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), is_causal=True)
            x = x + self._linear(self._merge(a), f"{layer}/self_attention/linear_1")
            q = self._linear(self._norm(x, f"{layer}/attention/layer_norm"), f"{layer}/attention/linear_0")
            k, v = self._linear(memory, f"{layer}/attention/linear_1").chunk(2, dim=-1)
            a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
            x = x + self._linear(self._merge(a), f"{layer}/attention/linear_2")
            h = self._linear(self._norm(x, f"{layer}/ffn/layer_norm"), f"{layer}/ffn/linear_0")
            x = x + self._linear(F.gelu(h), f"{layer}/ffn/linear_1")
        x = self._norm(x, "layer_norm")
        return x if hidden else self.logits(x)

    def variables(self) -> dict[str, np.ndarray]:
        """The decoder's weights under their CTranslate2 names (float32; the writer casts)."""
        return {k: self.params[k.replace("/", "__")].detach().cpu().numpy() for k in self.names}

"""Whisper's encoder and text decoder in torch, with the weights of a CTranslate2 Whisper model.

CTranslate2 runs Whisper fast but cannot train it; these modules hold the variables under their
CTranslate2 names, compute what CTranslate2 computes (pre-norm transformer layers; the encoder: two
convolutions with GELU, then self-attention layers; the decoder: causal self-attention,
cross-attention over the encoder output, GELU MLP, logits tied to the token embedding), and hand
the trained weights back (:meth:`variables`), so a fine-tuned model is written into a
``model.bin`` the runtime loads as before (``speechlm finetune-whisper``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class _CT2Part(nn.Module):
    """The float variables of a CTranslate2 model under ``prefix`` as parameters."""

    def __init__(self, variables: dict[str, np.ndarray], prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.names = [k for k in variables if k.startswith(prefix) and np.issubdtype(variables[k].dtype, np.floating)]
        if f"{prefix}layer_0/self_attention/linear_0/weight" not in self.names:
            raise ValueError(f"not a Whisper model: no {prefix}layer_0 among its variables")
        # '/' is not allowed in parameter names; '__' does not occur in CTranslate2's
        self.params = nn.ParameterDict({k.replace("/", "__"): nn.Parameter(torch.from_numpy(
            variables[k].astype(np.float32))) for k in self.names})
        self.n_layers = sum(k.endswith("self_attention/linear_0/weight") for k in self.names)
        self.n_heads = int(variables[f"{prefix}num_heads"])

    def _w(self, name: str) -> torch.Tensor:
        return self.params[(self.prefix + name).replace("/", "__")]

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

    def _self_attention(self, x: torch.Tensor, layer: str, causal: bool = False,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._linear(self._norm(x, f"{layer}/self_attention/layer_norm"),
                               f"{layer}/self_attention/linear_0").chunk(3, dim=-1)
        a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask,
                                           is_causal=causal)
        return x + self._linear(self._merge(a), f"{layer}/self_attention/linear_1")

    def _ffn(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        h = self._linear(self._norm(x, f"{layer}/ffn/layer_norm"), f"{layer}/ffn/linear_0")
        return x + self._linear(F.gelu(h), f"{layer}/ffn/linear_1")

    def layer_parameters(self, first: int) -> list[nn.Parameter]:
        """The weights of layers ``first``.. and of the final norm."""
        head = self.prefix.replace("/", "__")
        keep = tuple(f"{head}layer_{i}__" for i in range(first, self.n_layers)) + (f"{head}layer_norm__",)
        return [p for k, p in self.params.items() if k.startswith(keep)]

    def variables(self) -> dict[str, np.ndarray]:
        """The weights under their CTranslate2 names (float32; the writer casts)."""
        return {k: self.params[k.replace("/", "__")].detach().cpu().numpy() for k in self.names}


class WhisperEncoder(_CT2Part):
    """The encoder of a CTranslate2 ``WhisperSpec`` model (its float variables under ``encoder/``)."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        super().__init__(variables, "encoder/")

    def forward(self, mel: torch.Tensor, first: int = 0, last: int | None = None, mask: torch.Tensor | None = None,
                hidden: torch.Tensor | None = None) -> torch.Tensor:
        """Log-mel [B, n_mels, frames] (or ``hidden``, the input of layer ``first``) -> the states
        after layer ``last - 1`` ([B, frames / 2, D]); with ``last`` None, all layers and the final
        norm: the encoder's output. ``mask`` [B, frames / 2] is True where a frame is real."""
        if hidden is None:
            x = F.gelu(F.conv1d(mel, self._w("conv1/weight"), self._w("conv1/bias"), padding=1))
            x = F.gelu(F.conv1d(x, self._w("conv2/weight"), self._w("conv2/bias"), stride=2, padding=1))
            x = x.transpose(1, 2)
            hidden = x + self._w("position_encodings/encodings")[: x.shape[1]]
        attn_mask = None if mask is None else mask[:, None, None, :]
        for i in range(first, self.n_layers if last is None else last):
            hidden = self._ffn(self._self_attention(hidden, f"layer_{i}", mask=attn_mask), f"layer_{i}")
        return self._norm(hidden, "layer_norm") if last is None else hidden


class WhisperDecoder(_CT2Part):
    """The decoder of a CTranslate2 ``WhisperSpec`` model (its float variables under ``decoder/``)."""

    def __init__(self, variables: dict[str, np.ndarray]) -> None:
        super().__init__(variables, "decoder/")

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
        t = tokens.shape[1]
        x = F.embedding(tokens, self.embedding()) + self._w("position_encodings/encodings")[:t]
        mask = None if memory_mask is None else memory_mask[:, None, None, :]
        for i in range(self.n_layers):
            layer = f"layer_{i}"
            x = self._self_attention(x, layer, causal=True)
            q = self._linear(self._norm(x, f"{layer}/attention/layer_norm"), f"{layer}/attention/linear_0")
            k, v = self._linear(memory, f"{layer}/attention/linear_1").chunk(2, dim=-1)
            a = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v), attn_mask=mask)
            x = x + self._linear(self._merge(a), f"{layer}/attention/linear_2")
            x = self._ffn(x, layer)
        x = self._norm(x, "layer_norm")
        return x if hidden else self.logits(x)

"""The built-in decoder backbone: Llama-style (RoPE, RMSNorm, SwiGLU, grouped-query attention).

Attention goes through ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels on
GPU). Weight names and the rotary convention match transformers' Llama, so
:func:`load_llama_weights` copies a ``LlamaModel`` into it exactly (tested for parity).

Every backbone takes input embeddings and returns final-normed hidden states::

    h = backbone(x [B, T, D], positions [B, T] | None, mask [B, 1, T, Tk] bool | None, cache | None)

``mask`` is True where a query may attend a key; ``None`` means causal. ``cache`` (from
:meth:`new_cache`) holds keys and values of earlier calls for incremental decoding.
``set_activation_checkpointing(True)`` makes training recompute each layer in the backward pass
instead of keeping its activations (the train config's ``activation_checkpointing``).

Decoding feeds one position per row at a time; :meth:`BuiltinDecoder.step` computes the same
function as ``forward`` for it (up to float rounding) with about a third of the kernels: on a CPU
a one-position step costs its kernel count, not its arithmetic (``bench/multiscale.py --profile``).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from speechlm.registry import Registry

BACKBONES: Registry = Registry("backbone", entry_points="speechlm.backbones")


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rms_unit(x: torch.Tensor, dim_eps: torch.Tensor) -> torch.Tensor:
    """RMS normalisation in fp32 as :class:`RMSNorm`, without its gain and times ``sqrt(dim)`` (both
    folded into the next weights, see :class:`StepWeights`): ``x / sqrt(sum(x^2) + dim * eps)``,
    fewer kernels than the mean (``dim_eps``: ``dim * eps`` as a tensor, which a Python number
    would cost four more kernels to become)."""
    x32 = x if x.dtype == torch.float32 else x.float()
    out = x32 * (x32 * x32).sum(-1, keepdim=True).add_(dim_eps).rsqrt_()
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def add_mm(z: torch.Tensor):
    """``z + a @ b`` as one kernel, except under autocast (where addmm would round the fp32 residual
    stream to the low precision: added separately, as the layers do)."""
    if torch.is_autocast_enabled(z.device.type):
        return lambda z, a, b: z.to(torch.promote_types(z.dtype, a.dtype)) + torch.mm(a, b)
    return torch.addmm


class StepWeights(NamedTuple):
    """A decoder's weights rearranged for one-position steps, every matrix transposed (``x @ w``,
    one kernel): per layer ``qkv`` (q, k, v side by side, the input norm's gain and ``sqrt(dim)``
    folded in: see :func:`rms_unit`), ``o``, ``gu`` (gate and up side by side, the second norm's
    gain folded in), ``down``. ``qkv`` and ``gu`` are copies (~70% of the layers' weights again,
    while decoding), ``o`` and ``down`` views of the parameters. ``norm``: the final norm's gain
    times ``sqrt(dim)``; ``perm``: the column order with which ``rotate_half(x) * sin ==
    x[..., perm] * signed_sin``; ``dim_eps``: ``dim * eps`` for :func:`rms_unit`. ``key`` tells
    when the parameters changed (optimizer step, load, move)."""

    key: tuple
    qkv: list[torch.Tensor]
    o: list[torch.Tensor]
    gu: list[torch.Tensor]
    down: list[torch.Tensor]
    norm: torch.Tensor
    perm: torch.Tensor
    dim_eps: torch.Tensor


def params_key(module: nn.Module) -> tuple:
    """Changes whenever a parameter of ``module`` is updated in place, moved or cast (``load_state_dict``
    and ``.to()`` keep the Parameter objects). The parameter list is gathered once per module:
    walking the submodules on every decoding step cost ~3% of a one-row frame."""
    params = module.__dict__.get("_key_params")
    if params is None:
        params = module.__dict__["_key_params"] = tuple(module.parameters())
    return tuple((p._version, p.data_ptr(), p.dtype) for p in params)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class KVCache:
    """Per-layer key/value buffers that grow by doubling; rows can be selected or reordered."""

    def __init__(self, n_layers: int) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers
        self.length = 0

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``k, v`` ``[B, H, T, hd]`` for ``layer``; return all keys and values so far."""
        start = self.length
        end = start + k.shape[2]
        buf = self.k[layer]
        if buf is None or buf.shape[2] < end:
            cap = max(end, 2 * (buf.shape[2] if buf is not None else 64))
            nk = k.new_empty(k.shape[0], k.shape[1], cap, k.shape[3])
            nv = v.new_empty(nk.shape)
            if buf is not None:
                nk[:, :, :start] = buf[:, :, :start]
                nv[:, :, :start] = self.v[layer][:, :, :start]
            self.k[layer], self.v[layer] = nk, nv
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        if layer == len(self.k) - 1:
            self.length = end
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def select(self, rows: torch.Tensor) -> None:
        """Keep (and reorder/duplicate) batch rows ``rows``."""
        self.k = [None if t is None else t.index_select(0, rows) for t in self.k]
        self.v = [None if t is None else t.index_select(0, rows) for t in self.v]

    def get_seq_length(self) -> int:
        return self.length


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"dim {dim} must divide by n_heads {n_heads}, and n_heads by n_kv_heads {n_kv_heads}")
        self.h, self.kvh, self.hd = n_heads, n_kv_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.hd, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.hd, bias=False)
        self.o_proj = nn.Linear(n_heads * self.hd, dim, bias=False)
        self.dropout = dropout
        self.record = False  # keep head 0's attention probabilities in .probs (guided attention loss)
        self.probs: torch.Tensor | None = None

    def forward(self, x, cos, sin, mask, cache: KVCache | None, layer: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.kvh, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)
        if mask is None and T > 1 and past > 0:  # causal over the new block, full over the past
            qi = torch.arange(T, device=x.device)[:, None] + past
            mask = (torch.arange(past + T, device=x.device)[None, :] <= qi)[None, None]
        is_causal = mask is None and T > 1
        if self.record:  # one head's probabilities [B, T, keys], explicitly (SDPA does not return them)
            scores = (q[:, 0].float() @ k[:, 0].float().transpose(1, 2)) / math.sqrt(self.hd)
            if mask is not None:
                allowed = mask[:, 0]
            else:  # causal: new position i sees keys up to past + i
                allowed = torch.arange(k.shape[2], device=x.device)[None] <= torch.arange(T, device=x.device)[:, None] + past
            self.probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal,
            dropout_p=self.dropout if self.training else 0.0, enable_gqa=self.kvh != self.h,
        )
        return self.o_proj(out.transpose(1, 2).reshape(B, T, -1))


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=False)
        self.up_proj = nn.Linear(dim, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, dim, n_heads, n_kv_heads, ffn_dim, eps, dropout) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(dim, eps)
        self.self_attn = Attention(dim, n_heads, n_kv_heads, dropout)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.mlp = MLP(dim, ffn_dim)
        self.dropout = dropout  # also on each sublayer's output: what keeps a small model from memorizing

    def forward(self, x, cos, sin, mask, cache, layer):
        p = self.dropout if self.training else 0.0
        x = x + F.dropout(self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, layer), p)
        return x + F.dropout(self.mlp(self.post_attention_layernorm(x)), p)


def default_ffn_dim(dim: int) -> int:
    """SwiGLU hidden size: 8/3 * dim rounded up to a multiple of 64."""
    return int(math.ceil(8 * dim / 3 / 64) * 64)


@BACKBONES.register("builtin")
class BuiltinDecoder(nn.Module):
    """Llama-style decoder over input embeddings.

    Example:
        >>> bb = BuiltinDecoder(dim=64, n_layers=2, n_heads=4, n_kv_heads=2)
        >>> bb(torch.randn(1, 5, 64)).shape
        torch.Size([1, 5, 64])
    """

    def __init__(
        self, dim: int, n_layers: int, n_heads: int, n_kv_heads: int | None = None, ffn_dim: int | None = None,
        rope_theta: float = 10000.0, norm_eps: float = 1e-5, dropout: float = 0.0, max_len: int = 8192,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.n_layers = n_layers
        self.layers = nn.ModuleList(
            Block(dim, n_heads, n_kv_heads or n_heads, ffn_dim or default_ffn_dim(dim), norm_eps, dropout)
            for _ in range(n_layers)
        )
        self.norm = RMSNorm(dim, norm_eps)
        hd = dim // n_heads
        inv = 1.0 / (rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        self.register_buffer("inv_freq", inv, persistent=False)
        self.max_len = max_len
        self.activation_checkpointing = False
        self._step_weights: StepWeights | None = None
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None  # step's cos, signed sin [P, hd]

    def set_activation_checkpointing(self, on: bool = True) -> None:
        """Recompute each layer in the backward pass (training only) instead of keeping its activations."""
        self.activation_checkpointing = on

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        freqs = positions.float()[..., None] * self.inv_freq  # [B, T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # [B, 1, T, hd]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def new_cache(self, batch_size: int = 1) -> KVCache:
        return KVCache(self.n_layers)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + T, device=x.device)[None].expand(B, -1)
        cos, sin = self.rope(positions, x.dtype if not torch.is_autocast_enabled(x.device.type) else torch.float32)
        ckpt = self.activation_checkpointing and self.training and cache is None and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            if ckpt:  # non-reentrant: works with unused inputs, nested autocast and keyword arguments
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, None, i, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask, cache, i)
        return self.norm(x)

    # ---- one-position steps (decoding) ----------------------------------------------------------
    def step_weights(self) -> StepWeights:
        """:class:`StepWeights`, rebuilt only when a parameter changed."""
        key = params_key(self)
        if self._step_weights is not None and self._step_weights.key == key:
            return self._step_weights
        with torch.no_grad():
            qkv, o, gu, down = [], [], [], []

            def t(w: torch.Tensor) -> torch.Tensor:
                return w.t().contiguous()

            scale = self.dim ** 0.5
            for layer in self.layers:
                a, m = layer.self_attn, layer.mlp
                g_in, g_post = layer.input_layernorm.weight * scale, layer.post_attention_layernorm.weight * scale
                qkv.append(t(torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) * g_in))
                o.append(a.o_proj.weight.t())  # views: only the fused matrices are copies
                gu.append(t(torch.cat([m.gate_proj.weight, m.up_proj.weight]) * g_post))
                down.append(m.down_proj.weight.t())
            hd = self.inv_freq.numel() * 2
            perm = torch.cat([torch.arange(hd // 2, hd), torch.arange(hd // 2)]).to(self.inv_freq.device)
            dim_eps = torch.tensor(self.dim * self.norm.eps, device=self.inv_freq.device)
            self._step_weights = StepWeights(key, qkv, o, gu, down, self.norm.weight * scale, perm, dim_eps)
        return self._step_weights

    def rope_table(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin ``[P, hd]`` of positions ``0..P-1`` (``P >= n``, grown by doubling)."""
        if self._rope_table is None or self._rope_table[0].shape[0] < n or self._rope_table[0].device != self.inv_freq.device:
            P = max(n, 2 * (self._rope_table[0].shape[0] if self._rope_table is not None else 512))
            cos, sin = self.rope(torch.arange(P, device=self.inv_freq.device)[None], torch.float32)
            cos, sin = cos[0, 0], sin[0, 0].clone()
            sin[:, : sin.shape[1] // 2] *= -1
            self._rope_table = (cos, sin)
        return self._rope_table

    def step(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None, cache: KVCache) -> torch.Tensor:
        """One new position per row, as ``forward(x, positions[:, None], mask, cache)[:, 0]``:
        ``x [B, D]``, ``positions [B]``, ``mask [B, 1, 1, keys]`` (True: may attend; None: every key).
        Returns the final-normed hidden state ``[B, D]`` and appends to ``cache``."""
        w = self.step_weights()
        eps = w.dim_eps
        mm_add = add_mm(x)
        B = x.shape[0]
        cos_t, sin_t = self.rope_table(int(positions.max()) + 1)
        dt = x.dtype if not torch.is_autocast_enabled(x.device.type) else torch.float32
        cos, sin = cos_t[positions][:, None].to(dt), sin_t[positions][:, None].to(dt)  # [B, 1, hd]
        z = x
        for i, layer in enumerate(self.layers):
            a = layer.self_attn
            H, KVH, hd = a.h, a.kvh, a.hd
            qkv = torch.mm(rms_unit(z, eps), w.qkv[i])
            qk = qkv[:, : (H + KVH) * hd].view(B, H + KVH, hd)
            qk = qk * cos + qk[..., w.perm] * sin
            v = qkv[:, (H + KVH) * hd :].view(B, KVH, 1, hd)
            k_all, v_all = cache.update(i, qk[:, H:, None], v)
            o = F.scaled_dot_product_attention(qk[:, :H, None], k_all, v_all, attn_mask=mask, enable_gqa=KVH != H)
            z = mm_add(z, o.reshape(B, H * hd), w.o[i])
            g, u = torch.mm(rms_unit(z, eps), w.gu[i]).chunk(2, -1)
            z = mm_add(z, F.silu(g) * u, w.down[i])
        return rms_unit(z, eps) * w.norm.to(z.dtype)

    def freeze(self, n: int) -> None:
        """No gradient for the first ``n`` layers."""
        for layer in self.layers[:n]:
            layer.requires_grad_(False)

    def init_weights(self, std: float = 0.02) -> None:
        for name, p in self.named_parameters():
            if p.dim() == 2:
                s = std / math.sqrt(2 * self.n_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                nn.init.normal_(p, 0.0, s)


def load_llama_weights(decoder: BuiltinDecoder, llama_model: nn.Module) -> None:
    """Copy a transformers ``LlamaModel`` (or ``LlamaForCausalLM``) body into ``decoder``."""
    body = getattr(llama_model, "model", llama_model)
    sd = {k: v for k, v in body.state_dict().items() if not k.startswith("embed_tokens") and "rotary" not in k}
    missing, unexpected = decoder.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise KeyError(f"Llama weights do not fit the built-in decoder: missing {missing}, unexpected {unexpected}")


__all__ = ["BACKBONES", "BuiltinDecoder", "KVCache", "RMSNorm", "StepWeights", "load_llama_weights", "default_ffn_dim",
           "rms_unit", "add_mm", "params_key"]

"""Input embedding (sum over streams), output head (stream k>0 over its own codebook ranges only;
stream 0 over the target segment's own range plus the special tokens, or the whole vocabulary with
``stream0_full_vocab``), the multiscale depth head, and the weighted cross-entropy.

Example:
    >>> head = OutputHead(dim=64, vocab_size=600, stream_ids=[None, torch.arange(300, 556)])
    >>> head.logits(torch.randn(3, 64), 1).shape      # only stream 1's 256 codes
    torch.Size([3, 256])
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechlm.models.builtin import BuiltinDecoder, StepWeights, add_mm, params_key, rms_unit
from speechlm.vocab import Vocabulary


def stream_ids_from_vocab(vocab: Vocabulary, n_streams: int) -> list[torch.Tensor | None]:
    """Global ids allowed in each stream k > 0: the union of every tokenizer's stream-k range."""
    out: list[torch.Tensor | None] = [None]
    for k in range(1, n_streams):
        ids = {vocab.stream_range(name, k) for name in vocab.ranges if vocab.n_streams(name) > k}  # shared once
        out.append(torch.cat([torch.arange(a, b) for a, b in sorted(ids)]) if ids else torch.zeros(0, dtype=torch.int64))
    return out


class StreamEmbedding(nn.Module):
    """Sum of the streams' embeddings; ``<pad>`` in streams > 0 contributes nothing."""

    def __init__(self, vocab_size: int, dim: int, pad_id: int = 0) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, dim)
        self.pad_id = pad_id

    @property
    def weight(self) -> nn.Parameter:
        return self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[..., S]`` ids -> ``[..., D]``. One lookup for all streams: its backward fills one
        vocabulary-sized gradient, where a lookup per stream filled one each (fresh 10-20 MB
        buffers whose page faults took up to ~15% of a 30M training step in some profiles;
        ``docs/PERFORMANCE_NOTES.md``)."""
        e = self.emb(tokens).unbind(-2)  # unbind, not indexing: its backward stacks, never zero-fills
        x = e[0]
        for k in range(1, tokens.shape[-1]):
            x = x + e[k] * (tokens[..., k] != self.pad_id).unsqueeze(-1).to(x.dtype)
        return x


class OutputHead(nn.Module):
    """Logits per stream. Stream 0: the whole vocabulary; stream k > 0: ``stream_ids[k]`` only,
    from the same weight rows (tied to the embedding if asked) plus a learned per-stream offset
    added to the hidden state (zero at init)."""

    def __init__(
        self, dim: int, vocab_size: int, stream_ids: list[torch.Tensor | None], tied: nn.Parameter | None = None
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.n_streams = len(stream_ids)
        if tied is None:
            self.weight = nn.Parameter(torch.empty(vocab_size, dim))
            nn.init.normal_(self.weight, 0.0, 0.02)
        else:
            self.weight = tied
        self.stream_offset = nn.Parameter(torch.zeros(max(1, self.n_streams), dim))
        self._split: tuple[list[int], list[torch.Tensor]] | None = None  # inside shared_rows()
        self._split_specials: torch.Tensor | None = None
        self._slices: list[tuple[int, int] | None] = [None]
        for k in range(1, self.n_streams):
            ids = stream_ids[k]
            lookup = torch.full((vocab_size,), -1, dtype=torch.int64)
            lookup[ids] = torch.arange(len(ids))
            self.register_buffer(f"ids_{k}", ids.clone(), persistent=False)
            self.register_buffer(f"lookup_{k}", lookup, persistent=False)
            contiguous = len(ids) > 0 and bool((ids == torch.arange(int(ids[0]), int(ids[0]) + len(ids))).all())
            self._slices.append((int(ids[0]), int(ids[0]) + len(ids)) if contiguous else None)

    def set_stream0_groups(self, ranges: list[tuple[int, int]], first: list[int], special_ids: torch.Tensor) -> None:
        """Stream-0 loss over the target's own range plus the special tokens instead of the whole
        vocabulary: ``ranges`` are the ``[start, end)`` of every tokenizer stream, ``first[g]`` the
        group of stream 0 of range g's tokenizer; ids outside the ranges are specials (``<eos>``,
        tasks, markers), scored in the stream-0 group of the segment they end."""
        V = self.vocab_size
        group = torch.full((V,), -1, dtype=torch.int64)
        seg = torch.full((V,), -1, dtype=torch.int64)
        for g, (a, b) in enumerate(ranges):
            group[a:b] = g
            seg[a:b] = first[g]
        self.register_buffer("g0_seg", seg, persistent=False)
        rank = torch.full((V,), -1, dtype=torch.int64)
        rank[special_ids] = torch.arange(len(special_ids))
        self.register_buffer("g0_of", group, persistent=False)
        self.register_buffer("g0_bounds", torch.tensor(ranges, dtype=torch.int64).view(-1, 2), persistent=False)
        self.register_buffer("sp_ids", special_ids.clone(), persistent=False)
        self.register_buffer("sp_rank", rank, persistent=False)

    def train_columns(self, ids: torch.Tensor) -> tuple[int, int]:
        """In training only, each stream-0 group's logits span just the ids of ``ids`` in its range
        (the tokens the training data holds: a pretrained tokenizer's 30k pieces are mostly unused,
        and their softmax is a third of a small model's step); a group ``ids`` misses (audio) keeps
        its range. Returns the columns kept and the groups' columns."""
        if not hasattr(self, "g0_bounds"):
            raise ValueError("softmax: seen needs the stream-0 groups (model.stream0_full_vocab: false)")
        kept = total = 0
        ids = ids.to(self.g0_bounds.device).unique()
        for g, (a, b) in enumerate(self.g0_bounds.tolist()):
            cols = ids[(ids >= a) & (ids < b)]
            if 0 < len(cols) < b - a:
                self.register_buffer(f"g0_cols_{g}", cols, persistent=False)
            kept, total = kept + (len(cols) or b - a), total + b - a
        return kept, total

    def group_logits(self, h: torch.Tensor, y: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Stream-0 logits over group ``g``'s range (or its :meth:`train_columns`) and the specials,
        and the targets' columns."""
        cols = getattr(self, f"g0_cols_{g}", None) if self.training else None
        if cols is not None:
            rows, n = self.weight.index_select(0, cols), len(cols)
            at = torch.searchsorted(cols, y).clamp(max=n - 1)
            inside = cols[at] == y
        else:
            a, b = (int(v) for v in self.g0_bounds[g])
            rows, n, at = self._span(a, b), b - a, y - a
            inside = (y >= a) & (y < b)
        logits = torch.cat([h @ rows.to(h.dtype).t(), h @ self._specials().to(h.dtype).t()], -1)
        local = torch.where(inside, at, n + self.sp_rank[y])
        local = torch.where(inside | (self.sp_rank[y] >= 0), local, torch.full_like(local, -1))
        return logits, local

    def ids(self, k: int) -> torch.Tensor | None:
        """Global ids of stream ``k``'s logit columns (None: the whole vocabulary)."""
        return None if k == 0 else getattr(self, f"ids_{k}")

    def rows(self, k: int) -> torch.Tensor:
        if k == 0:
            return self.weight
        sl = self._slices[k]
        if sl is None:
            return self.weight.index_select(0, self.ids(k))
        return self._span(*sl)

    def _span(self, a: int, b: int) -> torch.Tensor:
        """Rows ``[a, b)`` of the weight: a view of the shared split inside :meth:`shared_rows`."""
        if self._split is None:
            return self.weight[a:b]
        cuts, chunks = self._split
        i, j = cuts.index(a), cuts.index(b)
        return chunks[i] if j == i + 1 else torch.cat(chunks[i:j])

    def _specials(self) -> torch.Tensor:
        if self._split is None:
            return self.weight.index_select(0, self.sp_ids)
        return self._split_specials

    @contextmanager
    def shared_rows(self) -> Iterator[None]:
        """Inside, the stream and group row ranges the loss reads are views of one ``split`` of the
        weight (made on entry), so the backward pass writes one vocabulary-sized gradient instead
        of a zero-filled one per range (each slice's backward allocates and fills the whole
        weight's shape). Use around one forward's loss."""
        V = self.vocab_size
        cuts = {0, V}
        for sl in self._slices[1:]:
            if sl is not None:
                cuts.update(sl)
        runs: list[tuple[int, int]] = []
        if hasattr(self, "g0_bounds"):
            for a, b in self.g0_bounds.tolist():
                cuts.update((a, b))
            for i in self.sp_ids.tolist():  # specials as runs of consecutive ids
                if runs and runs[-1][1] == i:
                    runs[-1] = (runs[-1][0], i + 1)
                else:
                    runs.append((i, i + 1))
            for a, b in runs:
                cuts.update((a, b))
        order = sorted(cuts)
        self._split = (order, list(self.weight.split([b - a for a, b in zip(order, order[1:])])))
        if runs:
            parts = [self._span(a, b) for a, b in runs]
            self._split_specials = parts[0] if len(parts) == 1 else torch.cat(parts)
        try:
            yield
        finally:
            self._split, self._split_specials = None, None

    def logits(self, h: torch.Tensor, k: int, ids: torch.Tensor | None = None,
               weight: torch.Tensor | None = None) -> torch.Tensor:
        """Logits of stream ``k`` over its columns, over global ``ids``, or against ``weight``
        (rows already gathered from :attr:`weight`, e.g. cached by a decoder)."""
        if k > 0:
            h = h + self.stream_offset[k].to(h.dtype)
        if weight is None:
            weight = self.weight.index_select(0, ids) if ids is not None else self.rows(k)
        return h @ weight.to(h.dtype).t()

    def local_targets(self, y: torch.Tensor, k: int) -> torch.Tensor:
        """Global ids -> column indices of stream ``k`` (-1 where not in its range)."""
        return y if k == 0 else getattr(self, f"lookup_{k}")[y]


def weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, where: str) -> tuple:
    """Weighted CE in fp32: returns ``(ce_sum, weight_sum, correct, count)``."""
    if targets.numel() and int(targets.min()) < 0:
        raise ValueError(f"{where}: a loss-weighted target token lies outside the stream's codebook range")
    logits = logits.float()
    ce = F.cross_entropy(logits, targets, reduction="none")
    correct = (logits.argmax(-1) == targets).float().sum()
    return (ce * weights).sum(), weights.sum(), correct, targets.new_tensor(targets.numel(), dtype=torch.float32)


class _LocalWeights(NamedTuple):
    """The depth head's weights rearranged for incremental decoding (see :meth:`DepthHead.step`):
    ``layers``, the local transformer's :class:`StepWeights`; ``out`` (``out_proj`` with the final
    norm's gain folded in) and ``proj`` (``in_proj``, ``tok_proj``), transposed; ``cos``/``sin
    [S, 1, hd]``: the RoPE of each local position (``sin`` signed, see :class:`StepWeights`)."""

    key: tuple
    layers: StepWeights
    out: torch.Tensor
    proj: tuple[torch.Tensor, torch.Tensor]
    cos: torch.Tensor
    sin: torch.Tensor


class LocalCache:
    """Keys and values of one row group's local steps: per layer ``[N, kv_heads, S, hd]``,
    allocated at step 0 (the local sequence is never longer than the streams)."""

    def __init__(self, weights: _LocalWeights, n_streams: int) -> None:
        self.w = weights
        self.S = n_streams
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []


class DepthHead(nn.Module):
    """Local transformer over the streams of one row (multiscale): step 0 reads the global hidden
    state, step k reads the embedding of stream k-1's token; step k predicts stream k.

    Its parameters are those of a :class:`BuiltinDecoder` (``local``) plus the projections. The
    incremental steps of decoding (:meth:`step`) compute the same function (up to float rounding)
    with fewer kernels: weights stacked, transposed and with the norms' gains folded in once
    (:meth:`decode_weights`), RoPE of the S local positions precomputed, a fixed-size local cache.
    Every generated frame takes S local steps of one token each, so on a CPU their cost is the
    number of kernels, not arithmetic (the profile in ``bench/multiscale.py``)."""

    def __init__(self, dim: int, n_streams: int, local_dim: int, local_layers: int, local_heads: int,
                 norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.in_proj = nn.Linear(dim, local_dim, bias=False)
        self.tok_proj = nn.Linear(dim, local_dim, bias=False)
        self.level = nn.Parameter(torch.zeros(n_streams, local_dim))
        self.local = BuiltinDecoder(local_dim, local_layers, local_heads, norm_eps=norm_eps, max_len=n_streams + 1)
        self.out_proj = nn.Linear(local_dim, dim, bias=False)
        self.n_streams = n_streams
        # RoPE of the local positions 0..S-1, once (BuiltinDecoder.rope recomputes it per call)
        cos, sin = self.local.rope(torch.arange(n_streams)[None], torch.float32)
        self.register_buffer("rope_cos", cos, persistent=False)  # [1, 1, S, hd]
        self.register_buffer("rope_sin", sin, persistent=False)
        self._weights: _LocalWeights | None = None

    def forward(self, h: torch.Tensor, prev_emb: torch.Tensor) -> torch.Tensor:
        """``h [N, D]``, ``prev_emb [N, k, D]`` (embeddings of streams 0..k-1) -> ``[N, k+1, D]``."""
        x = torch.cat([self.in_proj(h)[:, None], self.tok_proj(prev_emb)], 1)
        x = x + self.level[: x.shape[1]].to(x.dtype)
        return self.out_proj(self.local(x))

    # ---- incremental steps (decoding) -------------------------------------------------------
    def new_cache(self) -> LocalCache:
        """The cache of one row group's :meth:`step` calls (steps 0, 1, ... in order)."""
        return LocalCache(self.decode_weights(), self.n_streams)

    def decode_weights(self) -> _LocalWeights:
        """:class:`_LocalWeights`, rebuilt only when a parameter changed (optimizer step, load, move)."""
        key = params_key(self)
        if self._weights is not None and self._weights.key == key:
            return self._weights
        with torch.no_grad():
            def t(w: torch.Tensor) -> torch.Tensor:
                return w.t().contiguous()

            layers = self.local.step_weights()
            out = t(self.out_proj.weight * layers.norm)
            proj = (t(self.in_proj.weight), t(self.tok_proj.weight))
            hd = self.rope_cos.shape[-1]
            cos, sin = self.rope_cos[0, 0][:, None], self.rope_sin[0, 0][:, None].clone()  # [S, 1, hd]
            sin[..., : hd // 2] *= -1
        self._weights = _LocalWeights(key, layers, out, proj, cos, sin)
        return self._weights

    def step(self, x: torch.Tensor, k: int, cache: LocalCache) -> torch.Tensor:
        """Incremental local step ``k`` (decoding): ``x [N, D]`` is the global hidden state for
        ``k == 0``, else the embedding of stream ``k - 1``'s token; ``cache`` from
        :meth:`new_cache`. Returns the hidden state ``[N, D]`` that predicts stream ``k``."""
        w, lw = cache.w, cache.w.layers
        eps = lw.dim_eps
        mm_add = add_mm(x)
        z = mm_add(self.level[k].to(x.dtype), x, w.proj[k > 0])
        N = z.shape[0]
        fp32 = z.dtype == torch.float32
        cos, sin = (w.cos[k], w.sin[k]) if fp32 else (w.cos[k].to(z.dtype), w.sin[k].to(z.dtype))
        for i, layer in enumerate(self.local.layers):
            a = layer.self_attn
            H, KVH, hd = a.h, a.kvh, a.hd
            qkv = torch.mm(rms_unit(z, eps), lw.qkv[i])
            qk = qkv[:, : (H + KVH) * hd].view(N, H + KVH, hd)
            qk = qk * cos + qk[..., lw.perm] * sin  # RoPE of position k (as BuiltinDecoder applies it)
            v = qkv[:, (H + KVH) * hd :].view(N, KVH, 1, hd)
            if k == 0:  # the keys and values of the S local positions, one row group at a time
                cache.k.append(qk.new_empty(N, KVH, cache.S, hd))
                cache.v.append(v.new_empty(N, KVH, cache.S, hd))
                o = v if KVH == H else v.repeat_interleave(H // KVH, 1)  # one key: the softmax is exactly 1
            cache.k[i][:, :, k] = qk[:, H:]
            cache.v[i][:, :, k : k + 1] = v
            if k > 0:
                o = F.scaled_dot_product_attention(qk[:, :H, None], cache.k[i][:, :, : k + 1], cache.v[i][:, :, : k + 1],
                                                   enable_gqa=KVH != H)
            z = mm_add(z, o.reshape(N, H * hd), lw.o[i])
            g, u = torch.mm(rms_unit(z, eps), lw.gu[i]).chunk(2, -1)
            z = mm_add(z, F.silu(g) * u, lw.down[i])
        return torch.mm(rms_unit(z, eps), w.out)


__all__ = ["StreamEmbedding", "OutputHead", "DepthHead", "LocalCache", "weighted_ce", "stream_ids_from_vocab"]

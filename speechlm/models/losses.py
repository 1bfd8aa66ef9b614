"""Losses of the SpeechLM: weighted CE per stream (only on loss-weighted slots, stream k > 0 over
its own codebook range), the multiscale depth loss, the VALL-E style NAR loss and auxiliary CTC.

Every function returns sums (never means) and adds ``(sum, count)`` pairs to ``stats``, so
gradient-accumulation steps and ranks combine exactly.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechlm.data.sequence import AUDIO_TGT, TEXT_COND, TEXT_TGT
from speechlm.models.features import ctc_frames, left_aligned, length_features, length_units
from speechlm.models.heads import OutputHead, weighted_ce


def _add(stats: dict, name: str, s: torch.Tensor, n: torch.Tensor) -> None:
    if name in stats:
        a, b = stats[name]
        stats[name] = (a + s.detach(), b + n.detach())
    else:
        stats[name] = (s.detach().float(), n.detach().float())


def stream0_groups(head: OutputHead, y: torch.Tensor, rows_in: torch.Tensor | None) -> torch.Tensor:
    """Stream-0 group of each slot: the target's tokenizer stream; for a special target (``<eos>``,
    a marker) the group of the input row's token (the segment it ends); -1: whole vocabulary."""
    g = head.g0_of[y]
    if rows_in is not None:
        g_in = head.g0_seg[rows_in].max(-1).values  # the segment (stream 0 group) of the input row
        g = torch.where(g < 0, g_in, g)
    return g


def stream_slots_loss(head: OutputHead, hk: torch.Tensor, y: torch.Tensor, w: torch.Tensor, k: int,
                      stats: dict, rows_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CE of stream ``k`` at selected slots: ``hk [N, D]``, ``y [N]`` global ids, ``w [N]`` weights.
    Stream 0 uses per-group columns when the head has them (``rows_in [N, S]``: input rows)."""
    if k == 0 and hasattr(head, "g0_of"):
        g = stream0_groups(head, y, rows_in)
        parts = []
        for gi in g.unique().tolist():
            m = g == gi
            if gi < 0:
                parts.append(weighted_ce(head.logits(hk[m], 0), y[m], w[m], "stream 0"))
            else:
                logits, local = head.group_logits(hk[m], y[m], gi)
                parts.append(weighted_ce(logits, local, w[m], "stream 0"))
        ce, ws, correct, count = (sum(p[i] for p in parts) for i in range(4))
    else:
        ce, ws, correct, count = weighted_ce(head.logits(hk, k), head.local_targets(y, k), w, f"stream {k}")
    _add(stats, f"acc_s{k}", correct, count)
    _add(stats, "acc", correct, count)
    _add(stats, f"ce_s{k}", ce, ws)
    return ce, ws


def ar_loss(head: OutputHead, h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, sw: list[float],
            stats: dict, rows_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-row CE for every stream of ``y [B, T, S]`` where ``w > 0``; hidden ``h [B, T, D]``;
    ``rows_in [B, T, S']``: the input row at each position (for stream-0 groups)."""
    loss_sum = h.new_zeros((), dtype=torch.float32)
    weight_sum = h.new_zeros((), dtype=torch.float32)
    for k in range(y.shape[-1]):
        wk = w[..., k] * sw[k]
        sel = wk > 0
        if not bool(sel.any()):
            continue
        ls, ws = stream_slots_loss(head, h[sel], y[..., k][sel], wk[sel], k, stats,
                                   rows_in[sel] if rows_in is not None and k == 0 else None)
        loss_sum, weight_sum = loss_sum + ls, weight_sum + ws
    return loss_sum, weight_sum


def depth_loss(depth: nn.Module, head: OutputHead, embed: nn.Module, h: torch.Tensor, y: torch.Tensor,
               w: torch.Tensor, sw: list[float], stats: dict,
               rows_in: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multiscale: the depth head runs over the streams of each position that carries loss
    (``embed``: token ids -> embeddings, the input of its steps 1..)."""
    rows = w.sum(-1) > 0
    loss_sum = h.new_zeros((), dtype=torch.float32)
    weight_sum = h.new_zeros((), dtype=torch.float32)
    if not bool(rows.any()):
        return loss_sum, weight_sum
    hs, ys, ws_all = h[rows], y[rows], w[rows]
    r_in = rows_in[rows] if rows_in is not None else None
    out = depth(hs, embed(ys[:, :-1])).unbind(1)  # S x [N, D]: unbind's backward stacks, never zero-fills
    for k in range(ys.shape[-1]):
        wk = ws_all[:, k] * sw[k]
        sel = wk > 0
        if not bool(sel.any()):
            continue
        ls, ws = stream_slots_loss(head, out[k][sel], ys[:, k][sel], wk[sel], k, stats,
                                   r_in[sel] if r_in is not None and k == 0 else None)
        loss_sum, weight_sum = loss_sum + ls, weight_sum + ws
    return loss_sum, weight_sum


def nar_loss(head: OutputHead, encode: Callable[[torch.Tensor], torch.Tensor], lay, last: torch.Tensor,
             kinds: torch.Tensor, sw: list[float], stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """One random level ``k >= 1`` per row; predict stream k of audio-target rows in place.
    ``encode(level [B])``: hidden states ``[B, T'', D]`` of the NAR pass at that level; ``lay``: the
    layout, ``last``/``kinds [B, T'']``: the layout row and kind of each backbone position."""
    B, _, S = lay.tokens.shape
    zero = lay.weight.new_zeros(())
    if S < 2:
        return zero, zero
    level = torch.randint(1, S, (B,), device=lay.tokens.device)
    h = encode(level)
    rows = last.clamp(min=0)
    y = lay.tokens.gather(1, rows[..., None].expand(-1, -1, S)).gather(2, level[:, None, None].expand(-1, rows.shape[1], 1))[..., 0]
    w = lay.weight.gather(1, rows[..., None].expand(-1, -1, S)).gather(2, level[:, None, None].expand(-1, rows.shape[1], 1))[..., 0]
    w = w * (last >= 0) * (kinds == AUDIO_TGT)
    w = w * torch.tensor(sw, device=w.device, dtype=w.dtype)[level][:, None]
    loss_sum, weight_sum = zero, zero
    for k in range(1, S):
        sel = (w > 0) & (level[:, None] == k)
        if bool(sel.any()):
            ls, ws = stream_slots_loss(head, h[sel], y[sel], w[sel], k, stats)
            _add(stats, "nar_ce", ls, ws)
            loss_sum, weight_sum = loss_sum + ls, weight_sum + ws
    return loss_sum, weight_sum


def ctc_targets(ctc_range: tuple[int, int], lay) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Text-target ids of each row of layout ``lay`` as CTC labels (1-based, 0 = blank; ids in
    ``ctc_range``), lengths, and usable rows."""
    a, b = ctc_range
    is_txt = lay.kinds == TEXT_TGT
    tok = lay.tokens[..., 0]
    inside = (tok >= a) & (tok < b)
    usable = is_txt.any(1) & ~(is_txt & ~inside).any(1)
    order, _, n = left_aligned(is_txt)
    labels = (tok.gather(1, order) - a + 1).clamp(min=0)
    return labels, n, usable


def ctc_loss(ctc_head: nn.Module, ctc_range: tuple[int, int], prep, h: torch.Tensor, stats: dict,
             rows: torch.Tensor | None = None) -> torch.Tensor:
    """Summed CTC over rows with audio conditions and text targets in the CTC tokenizer's range
    (``rows [B]``: only those rows, e.g. the examples of the transcribing tasks)."""
    frames, n_in = ctc_frames(prep.kinds, h)
    labels, n_out, usable = ctc_targets(ctc_range, prep.layout)
    usable = usable & (n_in > 0)
    if rows is not None:
        usable = usable & rows
    if not bool(usable.any()):
        return h.new_zeros((), dtype=torch.float32)
    logp = ctc_head(frames[usable]).float().log_softmax(-1).transpose(0, 1)
    loss = F.ctc_loss(logp, labels[usable], n_in[usable], n_out[usable], blank=0, reduction="sum", zero_infinity=True)
    _add(stats, "ctc", loss, n_out[usable].sum().float())
    return loss


def guided_attention_loss(kinds: torch.Tensor, probs: torch.Tensor, sigma: float, stats: dict) -> torch.Tensor:
    """Summed guided-attention penalty (after Tachibana et al., 2017) of the rows with audio targets
    and text conditions: per audio-target frame ``t`` (of ``T``), one minus the attention mass on
    text conditions ``n`` (of ``N``) near the diagonal, ``sum_n a[t, n] exp(-(n/N - t/T)^2 / (2 g^2))``.
    The head must read the text, in order (mass on anything else, prompt or past audio, costs as
    much as reading the wrong phone); the model is unchanged at inference. ``kinds [B, T'']``: the
    backbone positions' kinds; ``probs [B, T'', T'']``: the head's attention; ``sigma``: the band width."""
    q_pos, q_ok, nq = left_aligned(kinds == AUDIO_TGT)
    k_pos, k_ok, nk = left_aligned(kinds == TEXT_COND)
    rows = (nq > 0) & (nk > 0)
    if not bool(rows.any()):
        return probs.new_zeros(())
    T = probs.shape[-1]
    a = probs.gather(1, q_pos[..., None].expand(-1, -1, T))
    a = a.gather(2, k_pos[:, None, :].expand(-1, a.shape[1], -1)) * k_ok[:, None, :]  # [B, Tq, N]
    t = (torch.arange(a.shape[1], device=a.device)[None, :, None] + 0.5) / nq.clamp(min=1)[:, None, None]
    n = (torch.arange(a.shape[2], device=a.device)[None, None, :] + 0.5) / nk.clamp(min=1)[:, None, None]
    band = torch.exp(-((n - t) ** 2) / (2 * sigma ** 2))
    per_frame = (1 - (a * band).sum(-1)) * q_ok * rows[:, None]
    loss = per_frame.sum()
    _add(stats, "guided_attn", loss, (q_ok & rows[:, None]).sum().float())
    return loss


def length_inputs(prep, h: torch.Tensor, kinds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row: the length head's features (detached), its target log(target rows /
    :func:`length_units`) and whether the row has one (raw sequence ``kinds [B, T]``)."""
    n_tgt = ((kinds == AUDIO_TGT) | (kinds == TEXT_TGT)).sum(1)
    units = length_units(kinds)
    is_t = (prep.kinds == AUDIO_TGT) | (prep.kinds == TEXT_TGT)
    first = is_t.to(torch.int64).argmax(1)
    ok = is_t.any(1) & (first > 0) & (n_tgt > 0) & (units > 0)
    feats = length_features(h.detach(), prep.kinds, (first - 1).clamp(min=0))
    return feats, torch.log(n_tgt.clamp(min=1).float() / units.clamp(min=1).float()), ok


def length_loss(length_head: nn.Module, prep, h: torch.Tensor, kinds: torch.Tensor, stats: dict) -> torch.Tensor:
    """Summed L1 error of the length head (see :func:`length_inputs`). It reads detached hidden
    states: the backbone is trained by the other losses only (a length loss that reached the
    backbone cost ASR and TTS much of their accuracy in the mini recipe)."""
    feats, target, ok = length_inputs(prep, h, kinds)
    err = (length_head(feats).float()[:, 0] - target).abs() * ok
    _add(stats, "length_err", err.sum(), ok.sum().float())
    return err.sum()


__all__ = ["ar_loss", "depth_loss", "nar_loss", "ctc_loss", "ctc_targets", "guided_attention_loss", "length_inputs",
           "length_loss", "stream_slots_loss", "stream0_groups"]

"""Searches for text targets: batched beam search (optionally joint CTC/attention scoring), CTC
greedy decoding, and the vectorized CTC prefix scorer they share.

Joint scoring follows hybrid CTC/attention decoding: a hypothesis ``g`` scores
``(1 - w) * log p_att(g) + w * log p_ctc(g...)``, where the CTC term is the prefix probability of
``g`` over the audio-condition frames (the full-sequence probability once ``g`` ends).

Example:
    >>> hyps = beam_search(model, prompts, DecodeConfig(search="beam", beam_size=4, ctc_weight=0.3))
    >>> best_ids = hyps[0][0].segments[0].frames[:, 0]
"""
from __future__ import annotations

import torch

from speechlm.data.batch import Batch
from speechlm.infer.config import DecodeConfig
from speechlm.infer.context import DecodeContext
from speechlm.infer.generate import context_room, length_limits, target_tokenizers
from speechlm.infer.steps import Hypothesis, Segment
from speechlm.models.features import ctc_frames

NEG = -1e30


def stream0_logits(model, h: torch.Tensor) -> torch.Tensor:
    """Full-vocabulary logits of stream 0 at hidden states ``h [N, D]`` (through the depth head if any)."""
    return model.logits(model.stream0_hidden(h), 0).float()


@torch.no_grad()
def ctc_log_probs(model, prompts: Batch, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """CTC log-probabilities ``[B, T, C]`` over each prompt's audio-condition frames, and lengths."""
    if getattr(model, "ctc_range", None) is None:
        raise ValueError("this model has no CTC head (train it with ctc_weight > 0 and ctc_tokenizer)")
    with model.autocast(prompts.tokens.device, precision):
        h, prep = model.hidden_states(prompts)
        frames, n = ctc_frames(prep.kinds, h)
        logp = model.ctc_head(frames).float().log_softmax(-1)
    if bool((n == 0).any()):
        raise ValueError(f"prompt {prompts.ids[int((n == 0).nonzero()[0])]!r} has no audio condition for CTC")
    return logp, n


@torch.no_grad()
def ctc_greedy(model, prompts: Batch, precision: str = "fp32") -> list[list[Hypothesis]]:
    """Best path of the CTC head: argmax per frame, repeats merged, blanks removed."""
    model.eval()
    dev = next(model.parameters()).device
    prompts = prompts.to(dev)
    logp, n = ctc_log_probs(model, prompts, precision)
    a = model.ctc_range[0]
    out = []
    for b in range(len(n)):
        best = logp[b, : int(n[b])].argmax(-1)
        keep = torch.ones_like(best, dtype=torch.bool)
        keep[1:] = best[1:] != best[:-1]
        ids = best[keep & (best > 0)] - 1 + a
        score = float(logp[b, : int(n[b])].max(-1).values.sum())
        seg = Segment(model.config.ctc_tokenizer, ids.cpu().numpy().reshape(-1, 1), model.vocab.eos_id)
        out.append([Hypothesis([seg], score)])
    return out


class CTCPrefixScorer:
    """Prefix probabilities of many hypotheses at once (``N`` rows, ``K`` candidates each)."""

    def __init__(self, logp: torch.Tensor, lengths: torch.Tensor) -> None:
        B, T, C = logp.shape
        t = torch.arange(T, device=logp.device)
        beyond = t[None] >= lengths[:, None]  # frames past a row's end: blank with probability 1
        self.logp = logp.masked_fill(beyond[..., None], NEG)
        self.logp[..., 0] = torch.where(beyond, torch.zeros_like(self.logp[..., 0]), self.logp[..., 0])
        self.T = T

    def initial(self, rows: torch.Tensor) -> dict:
        """State of the empty prefix for prompt rows ``rows [N]``."""
        blank = self.logp[rows, :, 0]
        r = torch.stack([torch.full_like(blank, NEG), blank.cumsum(-1)], -1)  # [N, T, 2] (non-blank, blank)
        return {"rows": rows, "r": r, "last": torch.full_like(rows, -1), "score": torch.zeros(len(rows), device=rows.device)}

    def score(self, state: dict, cand: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prefix scores ``[N, K]`` of each hypothesis extended by CTC columns ``cand [N, K]``
        (column 0 = end of sequence: the full probability), and the new ``r`` ``[N, K, T, 2]``."""
        rows, r, last = state["rows"], state["r"], state["last"]
        N, K = cand.shape
        lp = self.logp[rows]  # [N, T, C]
        x = lp.gather(2, cand.clamp(min=0)[:, None, :].expand(-1, self.T, -1)).transpose(1, 2)  # [N, K, T]
        r_sum = torch.logaddexp(r[..., 0], r[..., 1])  # [N, T]
        phi = torch.where((cand == last[:, None])[..., None], r[:, None, :, 1], r_sum[:, None, :])  # [N, K, T]
        empty = (last < 0)[:, None]
        rn = torch.full((N, K, self.T), NEG, device=lp.device)
        rb = torch.full((N, K, self.T), NEG, device=lp.device)
        rn[..., 0] = torch.where(empty, x[..., 0], torch.full_like(x[..., 0], NEG))
        blank = lp[:, :, 0]  # [N, T]
        for t in range(1, self.T):
            rn[..., t] = torch.logaddexp(rn[..., t - 1], phi[..., t - 1]) + x[..., t]
            rb[..., t] = torch.logaddexp(rb[..., t - 1], rn[..., t - 1]) + blank[:, None, t]
        psi = torch.logsumexp(torch.cat([rn[..., :1], phi[..., :-1] + x[..., 1:]], -1), -1)
        end = r_sum[:, -1][:, None].expand(-1, K)
        psi = torch.where(cand == 0, end, psi)
        return psi, torch.stack([rn, rb], -1)


@torch.no_grad()
def beam_search(model, prompts: Batch, config: DecodeConfig) -> list[list[Hypothesis]]:
    """Beam search over stream 0 for prompts whose target is a text (one-stream) segment."""
    config.validate()
    model.eval()
    dev = next(model.parameters()).device
    prompts = prompts.to(dev)
    vocab, W = model.vocab, config.beam_size
    names = [t[0] for t in target_tokenizers(model, prompts, None)]
    for b, name in enumerate(names):
        if vocab.n_streams(name) != 1:
            raise ValueError(f"beam search is for text targets; prompt {prompts.ids[b]!r} targets {name!r} "
                             f"with {vocab.n_streams(name)} streams (use search: sample or greedy)")
    B = len(names)
    limits = length_limits(prompts, config)
    lam = config.ctc_weight
    scorer = None
    if lam > 0:
        scorer = CTCPrefixScorer(*ctc_log_probs(model, prompts, config.precision))
        a_ctc = model.ctc_range[0]
        if any(vocab.stream_range(n, 0)[0] != a_ctc for n in names):
            raise ValueError(f"joint CTC scoring needs targets of the CTC tokenizer {model.config.ctc_tokenizer!r}")
    V, eos = len(vocab), vocab.eos_id
    allowed = torch.zeros(B, V, dtype=torch.bool, device=dev)
    for b, n in enumerate(names):
        allowed[b, slice(*vocab.stream_range(n, 0))] = True
    S2 = model.pattern.model_streams
    with model.autocast(dev, config.precision):
        ctx, h = DecodeContext.prefill(model, prompts)
        room = context_room(model, ctx, B)  # a hypothesis ends where the model's context does
        if room is not None:
            limits = [(min(lo, max(1, r)), min(hi, max(1, r))) for (lo, hi), r in zip(limits, room)]
        rows = torch.arange(B, device=dev).repeat_interleave(W)
        ctx.select(rows)
        h = h[rows]
        att = torch.full((B, W), NEG, device=dev)
        att[:, 0] = 0.0
        ctc_state = scorer.initial(rows) if scorer else None
        hist = torch.zeros(B * W, 0, dtype=torch.int64, device=dev)
        finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(B)]
        live = list(range(B))  # prompts still searching; rows of prompt live[i] are i*W..i*W+W-1
        for step in range(max(hi for _, hi in limits) + 1):
            P = len(live)
            logp = stream0_logits(model, h)
            mask = allowed[live].repeat_interleave(W, 0)
            lo_hi = [limits[p] for p in live]
            can_end = torch.tensor([step >= lo for lo, _ in lo_hi], device=dev).repeat_interleave(W)
            must_end = torch.tensor([step >= hi for _, hi in lo_hi], device=dev).repeat_interleave(W)
            mask[:, eos] = can_end
            mask[must_end] = False
            mask[must_end, eos] = True
            logp = logp.masked_fill(~mask, NEG).log_softmax(-1).masked_fill(~mask, NEG)
            cand_att = att.view(-1)[:, None] + logp  # [P*W, V]
            if scorer is not None:
                K = min(int(mask.sum(-1).min()), max(2 * W, 8))
                pre = logp.topk(K, -1).indices  # [P*W, K] global ids
                ctc_cols = torch.where(pre == eos, torch.zeros_like(pre), pre - a_ctc + 1)
                psi, r_new = scorer.score(ctc_state, ctc_cols)
                att_k = cand_att.gather(1, pre)
                joint = ((1 - lam) * att_k + lam * psi).masked_fill(att_k <= NEG / 2, NEG)
                flat = joint.view(P, W * K)
                ids_flat = pre.view(P, W * K)
            else:
                flat = cand_att.view(P, W * V)
            top = flat.topk(min(2 * W, flat.shape[1]), -1)
            # every prompt appends exactly W rows below (live continuations, then dead padding), so
            # prompt live[i]'s rows are always i*W..i*W+W-1, whichever prompts stop at this step
            new_rows, new_tok, new_att, new_psi, keep_prompts, parents_k = [], [], [], [], [], []
            for i, p in enumerate(live):
                alive, best_alive = 0, NEG
                for s, j in zip(top.values[i].tolist(), top.indices[i].tolist()):
                    if s <= NEG / 2:
                        break
                    if scorer is not None:
                        w_, k_ = divmod(j, K)
                        tok = int(ids_flat[i, j])
                    else:
                        w_, tok = divmod(j, V)
                    parent = i * W + w_
                    if tok == eos:
                        L = hist.shape[1] + 1
                        forced = step >= lo_hi[i][1]  # the length limit ended it, not the model
                        finished[p].append((s / (L ** config.length_penalty), hist[parent].tolist(), forced))
                        continue
                    best_alive = max(best_alive, s)
                    new_rows.append(parent)
                    new_tok.append(tok)
                    new_att.append(float(cand_att[parent, tok]))
                    if scorer is not None:
                        new_psi.append(float(psi[parent, k_]))
                        parents_k.append((parent, k_))
                    alive += 1
                    if alive == W:
                        break
                # fewer than W live continuations (e.g. CTC allows no longer prefix of a short
                # input): the beam narrows; the missing rows are dead (score NEG, never extended)
                for _ in range(W - alive):
                    new_rows.append(i * W)
                    new_tok.append(int(hist[i * W, -1]) if hist.shape[1] else eos)
                    new_att.append(NEG)
                    if scorer is not None:
                        new_psi.append(NEG)
                        parents_k.append((i * W, 0))
                # done when W hypotheses ended and no live one can still beat the worst of them
                worst = sorted(f[0] for f in finished[p])[-W] if len(finished[p]) >= W else NEG
                if alive > 0 and best_alive / ((hist.shape[1] + 1) ** config.length_penalty) > worst:
                    keep_prompts.append(i)
            if not keep_prompts:
                break
            sel = [n for i in keep_prompts for n in range(i * W, i * W + W)]
            sel_t = torch.tensor([new_rows[n] for n in sel], device=dev)
            tok_t = torch.tensor([new_tok[n] for n in sel], device=dev)
            live = [live[i] for i in keep_prompts]
            att = torch.tensor([new_att[n] for n in sel], device=dev).view(len(live), W)
            hist = torch.cat([hist[sel_t], tok_t[:, None]], 1)
            if scorer is not None:
                pk = torch.tensor([parents_k[n] for n in sel], device=dev)
                ctc_state = {"rows": ctc_state["rows"][sel_t], "r": r_new[pk[:, 0], pk[:, 1]],
                             "last": tok_t - a_ctc + 1, "score": torch.tensor([new_psi[n] for n in sel], device=dev)}
            ctx.select(sel_t)
            feed = torch.full((len(sel), S2), vocab.pad_id, dtype=torch.int64, device=dev)
            feed[:, 0] = tok_t
            h = ctx.step(model.step_input(feed))
    out = []
    for b in range(B):
        best = sorted(finished[b], key=lambda x: -x[0])[: config.nbest]
        out.append([Hypothesis([Segment(names[b], torch.tensor(t, dtype=torch.int64).numpy().reshape(-1, 1), eos, f)], s)
                    for s, t, f in best] or [Hypothesis([Segment(names[b], torch.zeros(0, 1, dtype=torch.int64).numpy(), eos)], NEG)])
    return out


__all__ = ["beam_search", "ctc_greedy", "CTCPrefixScorer", "ctc_log_probs", "stream0_logits"]

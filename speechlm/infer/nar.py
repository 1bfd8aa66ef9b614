"""The ar_nar strategy's pass after decoding (VALL-E): the autoregressive pass generated stream 0
of each audio target; the non-autoregressive pass fills streams 1.. level by level, each level
one bidirectional pass over the whole sequence (:meth:`ArNarPattern.after_decoding` calls it).
"""
from __future__ import annotations

import numpy as np
import torch

from speechlm.data.batch import Batch
from speechlm.data.sequence import AUDIO_TGT, SPECIAL, TEXT_TGT
from speechlm.infer.config import DecodeConfig
from speechlm.infer.sampling import sample
from speechlm.infer.steps import Masker, RowState


@torch.no_grad()
def nar_fill(model, prompts: Batch, states: list[RowState], config: DecodeConfig, gen: torch.Generator) -> None:
    """Fill streams 1.. of every generated audio segment, level by level (bidirectional passes)."""
    vocab, S, dev = model.vocab, model.n_streams, prompts.tokens.device
    seqs, kinds, toks = [], [], []
    for b, st in enumerate(states):
        n = int(prompts.lengths[b])
        rows = [prompts.tokens[b, :n].cpu().numpy()]
        kk = [prompts.kinds[b, :n].cpu().numpy().astype(np.int64)]
        tk = [[None] * n]
        for seg in st.hyp.segments:
            f = np.full((len(seg.frames), S), vocab.pad_id, dtype=np.int64)
            f[:, : seg.frames.shape[1]] = seg.frames
            end = np.full((1, S), vocab.pad_id, dtype=np.int64)
            end[0, 0] = seg.end
            rows += [f, end]
            kk += [np.full(len(f), AUDIO_TGT if seg.frames.shape[1] > 1 else TEXT_TGT), np.array([SPECIAL])]
            tk += [[seg.tokenizer] * len(f), [None]]
        seqs.append(np.concatenate(rows)), kinds.append(np.concatenate(kk)), toks.append(sum(tk, []))
    T = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), T, S), vocab.pad_id, dtype=torch.int64)
    kind_t = torch.zeros(len(seqs), T, dtype=torch.int8)
    for b, (s, k) in enumerate(zip(seqs, kinds)):
        tokens[b, : len(s)], kind_t[b, : len(k)] = torch.from_numpy(s), torch.from_numpy(k)
    lengths = torch.tensor([len(s) for s in seqs])
    tokens, kind_t, lengths = tokens.to(dev), kind_t.to(dev), lengths.to(dev)
    prep = model.prepare(tokens, torch.zeros(tokens.shape, device=dev), kind_t, lengths, prompts.prefix_lens)
    masker = Masker(model)
    temp = config.temperature_used
    audio_pos = [(b, q, int(prep.last[b, q])) for b, q in (prep.kinds == AUDIO_TGT).nonzero().tolist()]
    for k in range(1, S):
        pos = [(b, q, r) for b, q, r in audio_pos if toks[b][r] is not None and vocab.n_streams(toks[b][r]) > k]
        if not pos:
            continue
        tok_in, extra = model.pattern.nar_inputs(prep.layout, torch.full((len(seqs),), k, device=dev), model.nar_level)
        h = model.encode(prep, tok_in, extra, bidirectional=True)
        bq = torch.tensor([(b, q) for b, q, _ in pos], device=dev)
        logits = model.logits(h[bq[:, 0], bq[:, 1]], k).float()
        masks = torch.stack([masker.mask(k, (toks[b][r], k, ()), dev) for b, _, r in pos])
        cols = sample(logits.masked_fill(~masks, float("-inf")), temp, config.top_k, config.top_p, config.min_p, gen)
        ids = masker.to_global(k, cols)
        rr = torch.tensor([r for _, _, r in pos], device=dev)
        prep.layout.tokens[bq[:, 0], rr, k] = ids
    filled = prep.layout.tokens.cpu().numpy()
    for b, st in enumerate(states):
        r = int(prompts.lengths[b])
        for seg in st.hyp.segments:
            n = seg.frames.shape[1]
            seg.frames = filled[b, r : r + len(seg.frames), :n].copy()
            r += len(seg.frames) + 1


__all__ = ["nar_fill"]

"""Stream patterns: build matches a slow loop-based reference, build-then-revert is the identity,
and delayed tokens never leak across segment boundaries."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from speechlm.data.sequence import AUDIO_COND, AUDIO_TGT, PAD, SPECIAL, TEXT_COND, TEXT_TGT
from speechlm.models.patterns import PATTERNS

PAD_ID = 0


def random_row(rng: np.random.Generator, S: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A random sequence of segments: specials, text runs, audio runs using 1..S streams."""
    toks, kinds = [], []
    for _ in range(rng.integers(1, 6)):
        kind = int(rng.choice([SPECIAL, TEXT_COND, AUDIO_COND, TEXT_TGT, AUDIO_TGT]))
        toks.append(np.r_[rng.integers(5, 50), [PAD_ID] * (S - 1)][None])  # a marker
        kinds.append([SPECIAL])
        if kind == SPECIAL:
            continue
        L = int(rng.integers(0, 6))
        n = int(rng.integers(1, S + 1)) if kind in (AUDIO_COND, AUDIO_TGT) else 1
        block = np.full((L, S), PAD_ID)
        block[:, :n] = rng.integers(100, 999, (L, n))
        toks.append(block)
        kinds.append([kind] * L)
    if rng.random() < 0.7:  # usually an <eos>
        toks.append(np.r_[1, [PAD_ID] * (S - 1)][None])
        kinds.append([SPECIAL])
    tok = np.concatenate(toks).astype(np.int64)
    w = (rng.random(tok.shape) < 0.5).astype(np.float32) * (tok != PAD_ID)
    return tok, w, np.concatenate(kinds).astype(np.int8)


def random_batch(rng, B: int, S: int):
    rows = [random_row(rng, S) for _ in range(B)]
    T = max(len(r[0]) for r in rows)
    tok = np.zeros((B, T, S), np.int64)
    w = np.zeros((B, T, S), np.float32)
    kinds = np.full((B, T), PAD, np.int8)
    for b, (t, ww, k) in enumerate(rows):
        tok[b, : len(t)], w[b, : len(t)], kinds[b, : len(t)] = t, ww, k
    lengths = torch.tensor([len(r[0]) for r in rows])
    return torch.from_numpy(tok), torch.from_numpy(w), torch.from_numpy(kinds), lengths, rows


def _runs(kinds, t):
    e = t
    while e < len(kinds) and kinds[e] == kinds[t]:
        e += 1
    return e


def _used(tok, t, e, S):
    return max([s + 1 for s in range(S) for u in range(t, e) if tok[u][s] != PAD_ID] or [1])


def ref_parallel(tok, w, kinds, S):
    return [[(int(tok[t][s]), float(w[t][s])) for s in range(S)] for t in range(len(tok))]


def ref_delay(tok, w, kinds, S):
    out, t = [], 0
    while t < len(tok):
        if kinds[t] != AUDIO_TGT:
            out.append([(int(tok[t][s]), float(w[t][s])) for s in range(S)])
            t += 1
            continue
        e = _runs(kinds, t)
        n, L = _used(tok, t, e, S), e - t
        for j in range(L + n - 1):
            row = []
            for s in range(S):
                f = j - s
                row.append((int(tok[t + f][s]), float(w[t + f][s])) if s < n and 0 <= f < L else (PAD_ID, 0.0))
            out.append(row)
        if n > 1 and e < len(tok) and kinds[e] == SPECIAL:
            out[len(out) - (n - 1)][0] = (int(tok[e][0]), float(w[e][0]))
            t = e + 1
        else:
            t = e
    return out


def ref_flat(tok, w, kinds, S):
    out, t = [], 0
    while t < len(tok):
        e = _runs(kinds, t)
        n = _used(tok, t, e, S) if kinds[t] in (AUDIO_COND, AUDIO_TGT) else 1
        for u in range(t, e):
            for s in range(n):
                out.append([(int(tok[u][s]), float(w[u][s]))])
        t = e
    return out


REFS = {"parallel": ref_parallel, "delay": ref_delay, "flat": ref_flat, "multiscale": ref_parallel, "ar_nar": ref_parallel}


def test_every_registered_pattern_has_a_reference_and_a_grid():
    # the built-in ones (tests may register their own, e.g. test_strategy_plugin.py)
    builtin = {n for n in PATTERNS.names() if PATTERNS.get(n).__module__ == "speechlm.models.patterns"}
    assert builtin == set(REFS)
    for name in builtin:
        doc = PATTERNS.get(name).__doc__
        assert doc and ("0:" in doc or "output" in doc or "row" in doc), f"{name} has no grid in its docstring"


@pytest.mark.parametrize("name", sorted(REFS))
@pytest.mark.parametrize("S", [1, 2, 3, 5])
def test_build_matches_loop_reference_and_reverts(name, S):
    rng = np.random.default_rng(S * 7 + len(name))
    pat = PATTERNS.get(name)(S, PAD_ID)
    for trial in range(25):
        B = int(rng.integers(1, 5))
        tok, w, kinds, lengths, rows = random_batch(rng, B, S)
        lay = pat.build(tok, w, kinds, lengths)
        for b, (t, ww, k) in enumerate(rows):
            ref = REFS[name](t, ww, k, S)
            n = int(lay.lengths[b])
            assert n == len(ref), f"{name} S={S} trial {trial} row {b}: length {n} vs reference {len(ref)}"
            got = [[(int(lay.tokens[b, p, s]), float(lay.weight[b, p, s])) for s in range(lay.tokens.shape[2])]
                   for p in range(n)]
            assert got == ref, f"{name} S={S} trial {trial} row {b}"
            assert (lay.tokens[b, n:] == PAD_ID).all() and (lay.weight[b, n:] == 0).all()
        back = pat.revert(lay.tokens, lay, tok.shape[1])
        assert torch.equal(back, tok), f"{name}: revert(build(x)) != x"
        # logits revert with the same map: one-hot logits of the tokens come back to the tokens
        V = int(tok.max()) + 1
        logits = torch.nn.functional.one_hot(lay.tokens, V).float()
        assert torch.equal(pat.revert_logits(logits, lay, tok.shape[1]).argmax(-1), tok)


def test_delay_never_leaks_into_the_next_segment():
    """Every row after a delayed audio segment (its tail included) holds only that segment's
    tokens; the text segment that follows starts after the tail with clean streams."""
    S = 4
    pat = PATTERNS.get("delay")(S, PAD_ID)
    audio = np.arange(100, 100 + 5 * S).reshape(5, S)
    tok = np.concatenate([[[10, 0, 0, 0]], audio, [[20, 0, 0, 0]], [[300, 0, 0, 0], [301, 0, 0, 0]], [[1, 0, 0, 0]]])
    kinds = np.array([SPECIAL] + [AUDIO_TGT] * 5 + [SPECIAL, TEXT_TGT, TEXT_TGT, SPECIAL], np.int8)
    lay = pat.build(torch.tensor(tok)[None], torch.ones(1, len(tok), S), torch.tensor(kinds)[None], torch.tensor([len(tok)]))
    out = lay.tokens[0].tolist()
    assert len(out) == 1 + 5 + (S - 1) + 3  # marker, frames + tail, text, eos
    assert out[6][0] == 20, "the next marker sits in stream 0 of the first tail row"
    assert out[1 + 5 + S - 1 : ] == [[300, 0, 0, 0], [301, 0, 0, 0], [1, 0, 0, 0]]
    for k in range(S):  # stream k holds exactly its 5 frames, shifted by k
        col = [r[k] for r in out[1 : 1 + 5 + S - 1]]
        assert col[k : k + 5] == audio[:, k].tolist()
        assert all(x in (0, 20) for x in col[:k] + col[k + 5 :])


def test_flat_uses_only_the_streams_a_segment_has():
    pat = PATTERNS.get("flat")(3, PAD_ID)
    tok = torch.tensor([[[10, 0, 0], [100, 200, 0], [101, 201, 0], [1, 0, 0]]])
    kinds = torch.tensor([[SPECIAL, AUDIO_TGT, AUDIO_TGT, SPECIAL]], dtype=torch.int8)
    lay = pat.build(tok, torch.ones(1, 4, 3), kinds, torch.tensor([4]))
    assert lay.tokens[0, :, 0].tolist() == [10, 100, 200, 101, 201, 1]
    assert lay.pos[0].tolist() == [0, 1, 3, 5]

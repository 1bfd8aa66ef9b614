"""Bucketed, mixed, resumable, sharded batches; validation batches."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from speechlm.data.sampler import BucketSampler, bucket_batches, fixed_batches


def _lengths(seed=0, sizes=(500, 300, 200)):
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 200, size=n) for n in sizes]


def test_bucket_budget():
    lens = np.sort(np.random.default_rng(0).integers(5, 100, size=500))
    batches = bucket_batches(lens, max_tokens=400, max_batch_size=16)
    assert np.concatenate(batches).tolist() == list(range(500))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or lens[b].max() * len(b) <= 400
    assert [b.tolist() for b in bucket_batches(np.array([900, 950]), 400)] == [[0], [1]]  # too long: alone


def test_deterministic_under_seed():
    a = BucketSampler(_lengths(), [1, 1, 1], 2000, pool_size=300, seed=5)
    b = BucketSampler(_lengths(), [1, 1, 1], 2000, pool_size=300, seed=5)
    c = BucketSampler(_lengths(), [1, 1, 1], 2000, pool_size=300, seed=6)
    assert [a.batch(g) for g in range(40)] == [b.batch(g) for g in range(40)]
    assert [a.batch(g) for g in range(40)] != [c.batch(g) for g in range(40)]


def test_budget_respected_in_stream():
    lens = _lengths()
    s = BucketSampler(lens, [1, 2, 3], 1500, max_batch_size=20, pool_size=400, seed=0)
    for g in range(60):
        batch = s.batch(g)
        n = [lens[d][i % len(lens[d])] for d, i in batch]
        assert len(batch) <= 20 and (len(batch) == 1 or max(n) * len(batch) <= 1500)


def test_mixing_matches_weights():
    weights = [0.5, 0.3, 0.2]
    s = BucketSampler(_lengths(), weights, 3000, pool_size=1000, seed=1)
    counts = Counter()
    total = 0
    g = 0
    while total < 20000:
        for d, _ in s.batch(g):
            counts[d] += 1
            total += 1
        g += 1
    for d, w in enumerate(weights):
        sigma = np.sqrt(w * (1 - w) / total)
        assert abs(counts[d] / total - w) < 4 * sigma, (d, counts[d] / total, w)


def test_each_example_once_per_epoch():
    # 4 pools of 64 make one epoch of 256: each epoch is a permutation (no repeat, no skip)
    lens = [np.random.default_rng(2).integers(10, 100, size=256)]
    s = BucketSampler(lens, [1], 800, pool_size=64, seed=0)
    seen = []
    g = 0
    while len(seen) < 256 * 3:
        seen += [i for _, i in s.batch(g)]  # draws: index + epoch * 256
        g += 1
    epochs = [seen[256 * e: 256 * (e + 1)] for e in range(3)]
    assert all(sorted(x) == list(range(256 * e, 256 * (e + 1))) for e, x in enumerate(epochs))
    assert [i % 256 for i in epochs[0]] != [i % 256 for i in epochs[1]]  # reshuffled each epoch


def test_resume_continues_exactly():
    lens = _lengths()
    s = BucketSampler(lens, [2, 1, 1], 1500, pool_size=200, seed=0)
    stream = [s.batch(g) for g in range(100)]
    for k in (0, 1, 37, 61):
        state = s.state_dict(k)
        fresh = BucketSampler(lens, [2, 1, 1], 1500, pool_size=200, seed=0)
        nxt = fresh.load_state_dict(state)
        assert nxt == k
        assert [fresh.batch(g) for g in range(k, 100)] == stream[k:]
    with pytest.raises(ValueError, match="seed"):
        BucketSampler(lens, [2, 1, 1], 1500, pool_size=200, seed=1).load_state_dict(s.state_dict(3))


def test_ranks_partition_the_stream():
    lens = _lengths()
    s = BucketSampler(lens, [1, 1, 1], 1500, pool_size=200, seed=0)
    single = [s.batch(g) for g in range(10, 40)]
    r0, r1 = s.rank_batches(10, 0, 2), s.rank_batches(10, 1, 2)
    got = {}
    for _ in range(15):
        for it in (r0, r1):
            g, b = next(it)
            got[g] = b
    assert [got[g] for g in range(10, 40)] == single


def test_fixed_batches_cover_once_one_task_each():
    lens = _lengths(sizes=(50, 30))
    batches = fixed_batches(lens, 1000)
    keys = [k for b in batches for k in b]
    assert sorted(keys) == sorted((d, i) for d in range(2) for i in range(len(lens[d])))
    assert all(len({d for d, _ in b}) == 1 for b in batches)

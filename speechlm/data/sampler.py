"""Length-bucketed, weight-mixed, resumable batches: one global stream shared by every rank.

The stream is a deterministic function of the seed: no epochs, no wall clock. It is cut into
*pools* of ``pool_size`` examples::

    pool p:  draw pool_size entries ~ weights (rng(seed, p))      e.g. asr asr tts asr tts ...
             take each entry's next examples from its own shuffled order (reshuffled when used up)
             sort the pool by length, cut batches while  longest x count <= max_tokens
             shuffle the batches of the pool (rng(seed, p))      -> global batches g0, g1, ...

Rank ``r`` of ``W`` consumes global batches ``r, r+W, r+2W, ...``; with gradient accumulation
``A`` a step consumes ``A*W`` batches, so one process with ``A=2`` sees exactly the batches that two
processes with ``A=1`` see. The resume state is just ``next``, the number of global batches
consumed, plus the per-entry draw counts at the start of the pool that holds it.

Example (one entry of three examples of lengths 5, 9, 7; keys are ``(entry, draw)`` where the
example is ``draw % 3`` and its epoch ``draw // 3``):
    >>> s = BucketSampler([np.array([5, 9, 7])], [1.0], max_tokens=20, pool_size=3, seed=0)
    >>> [s.batch(g) for g in range(4)]
    [[(0, 1)], [(0, 0), (0, 2)], [(0, 3), (0, 5)], [(0, 4)]]
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Iterator

import numpy as np

log = logging.getLogger(__name__)

Key = tuple[int, int]  # (entry, draw): example index = draw % len(entry), epoch = draw // len(entry)


def bucket_batches(lengths: np.ndarray, max_tokens: int, max_batch_size: int | None = None) -> list[np.ndarray]:
    """Cut positions ``0..len-1`` into batches, shortest first (callers sort, this only cuts).

    A batch grows while ``max(length) * count <= max_tokens`` and ``count <= max_batch_size``. An
    example longer than the budget alone is a batch of one (the context limit was checked when
    indexing).
    """
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for j, n in enumerate(lengths.tolist()):
        count = j - start + 1
        new_longest = max(longest, n)
        full = max_batch_size is not None and count > max_batch_size
        if count > 1 and (new_longest * count > max_tokens or full):
            batches.append(np.arange(start, j))
            start, new_longest = j, n
        longest = new_longest
    if start < len(lengths):
        batches.append(np.arange(start, len(lengths)))
    return batches


class BucketSampler:
    """The global batch stream over several entries mixed by ``weights``.

    ``lengths[d][i]`` is the sequence length of example ``i`` of entry ``d``.
    """

    def __init__(self, lengths: list[np.ndarray], weights: list[float] | np.ndarray, max_tokens: int,
                 max_batch_size: int | None = None, pool_size: int = 2000, seed: int = 0,
                 history: int = 16) -> None:
        if len(lengths) != len(weights):
            raise ValueError(f"{len(lengths)} entries but {len(weights)} weights")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be > 0, got {max_tokens}")
        self.lengths = [np.asarray(x, dtype=np.int64) for x in lengths]
        if any(len(x) == 0 for x in self.lengths):
            raise ValueError("every data entry needs at least one example")
        w = np.asarray(weights, dtype=np.float64)
        self.weights = w / w.sum()
        self.max_tokens, self.max_batch_size = int(max_tokens), max_batch_size
        self.pool_size, self.seed, self.history = int(pool_size), int(seed), history
        # pool -> (first global batch, per-entry draw counts at the pool start)
        self._starts: OrderedDict[int, tuple[int, np.ndarray]] = OrderedDict()
        self._starts[0] = (0, np.zeros(len(self.lengths), dtype=np.int64))
        self._cache: OrderedDict[int, list[list[Key]]] = OrderedDict()
        self._perm: dict[tuple[int, int], np.ndarray] = {}

    # ---- the deterministic stream ------------------------------------------------------------
    def _order(self, entry: int, epoch: int) -> np.ndarray:
        key = (entry, epoch)
        if key not in self._perm:
            if len(self._perm) > 2 * len(self.lengths):
                self._perm.clear()
            rng = np.random.default_rng([self.seed, 7, entry, epoch])
            self._perm[key] = rng.permutation(len(self.lengths[entry]))
        return self._perm[key]

    def _draw(self, entry: int, start: int, count: int) -> np.ndarray:
        """Draws ``start .. start+count-1`` of the endless shuffled order of ``entry``, as
        ``index + epoch * n`` (the epoch lets per-example choices, e.g. speaker prompts, vary)."""
        n = len(self.lengths[entry])
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            epoch, pos = divmod(start + done, n)
            take = min(count - done, n - pos)
            out[done:done + take] = self._order(entry, epoch)[pos:pos + take] + epoch * n
            done += take
        return out

    def _make_pool(self, p: int, counts: np.ndarray) -> tuple[list[list[Key]], np.ndarray]:
        rng = np.random.default_rng([self.seed, 1, p])
        choice = rng.choice(len(self.lengths), size=self.pool_size, p=self.weights)
        keys = np.empty((self.pool_size, 2), dtype=np.int64)
        keys[:, 0] = choice
        new_counts = counts.copy()
        lens = np.empty(self.pool_size, dtype=np.int64)
        for d in range(len(self.lengths)):
            where = np.flatnonzero(choice == d)
            keys[where, 1] = self._draw(d, int(counts[d]), len(where))
            lens[where] = self.lengths[d][keys[where, 1] % len(self.lengths[d])]
            new_counts[d] += len(where)
        order = np.argsort(lens, kind="stable")
        cuts = bucket_batches(lens[order], self.max_tokens, self.max_batch_size)
        batches = [[(int(keys[j, 0]), int(keys[j, 1])) for j in order[c]] for c in cuts]
        perm = rng.permutation(len(batches))
        return [batches[k] for k in perm], new_counts

    def _pool(self, p: int) -> list[list[Key]]:
        if p in self._cache:
            self._cache.move_to_end(p)
            return self._cache[p]
        if p not in self._starts:
            raise KeyError(f"pool {p} is no longer known; the sampler keeps the last {self.history}")
        first, counts = self._starts[p]
        batches, new_counts = self._make_pool(p, counts)
        self._starts.setdefault(p + 1, (first + len(batches), new_counts))
        while len(self._starts) > self.history:
            self._starts.popitem(last=False)
        self._cache[p] = batches
        while len(self._cache) > 3:
            self._cache.popitem(last=False)
        return batches

    def _locate(self, g: int) -> tuple[int, int]:
        """(pool, position in pool) of global batch ``g``."""
        known = [p for p, (first, _) in self._starts.items() if first <= g]
        if not known:
            raise KeyError(f"global batch {g} is before the sampler's history; load a newer state")
        p = max(known)
        while True:
            first = self._starts[p][0]
            batches = self._pool(p)
            if g < first + len(batches):
                return p, g - first
            p += 1

    def batch(self, g: int) -> list[Key]:
        """Global batch ``g`` as ``[(entry, draw), ...]`` (see :data:`Key`)."""
        p, j = self._locate(g)
        return self._pool(p)[j]

    def rank_batches(self, start: int, rank: int = 0, world_size: int = 1) -> Iterator[tuple[int, list[Key]]]:
        """Endless ``(g, batch)`` for ``rank``: ``g = start + rank, start + rank + W, ...``."""
        g = start + rank
        while True:
            yield g, self.batch(g)
            g += world_size

    # ---- resume ------------------------------------------------------------------------------
    def state_dict(self, next_batch: int) -> dict:
        """State to continue at global batch ``next_batch`` (the number of batches consumed)."""
        p, _ = self._locate(next_batch)
        first, counts = self._starts[p]
        return {"next": int(next_batch), "pool": int(p), "pool_first": int(first),
                "counts": [int(c) for c in counts], "seed": self.seed, "pool_size": self.pool_size,
                "max_tokens": self.max_tokens, "n_entries": len(self.lengths)}

    def load_state_dict(self, state: dict) -> int:
        """Restore; returns ``next`` (the global batch to consume next)."""
        for key in ("seed", "pool_size", "max_tokens", "n_entries"):
            mine = self.seed if key == "seed" else (len(self.lengths) if key == "n_entries" else getattr(self, key))
            if state.get(key) != mine:
                raise ValueError(f"sampler state has {key}={state.get(key)} but this run has {mine}; "
                                 f"resume with the same data entries and batching config")
        self._starts = OrderedDict({int(state["pool"]): (int(state["pool_first"]),
                                                         np.array(state["counts"], dtype=np.int64))})
        self._cache.clear()
        return int(state["next"])


def fixed_batches(lengths: list[np.ndarray], max_tokens: int, max_batch_size: int | None = None) -> list[list[Key]]:
    """Every example once, per entry (so a batch has one task), sorted by length and bucketed
    (for validation)."""
    out: list[list[Key]] = []
    for d, lens in enumerate(lengths):
        order = np.argsort(np.asarray(lens), kind="stable")
        out += [[(d, int(i)) for i in order[c]] for c in bucket_batches(np.asarray(lens)[order], max_tokens,
                                                                         max_batch_size)]
    return out


__all__ = ["BucketSampler", "bucket_batches", "fixed_batches"]

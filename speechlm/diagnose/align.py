"""Frame alignments between a reference and a hypothesis, and per-field errors along them.

Teacher-forced predictions are aligned by construction (frame ``f`` predicts frame ``f``). A
free-running output has its own length and timing: :func:`linear_pairs` maps reference frame ``i``
to output frame ``i * M / N`` (timing errors count as errors: drift in tempo shows), and
:func:`dtw_pairs` takes the cheapest monotonic path over a frame distance (timing absorbed: what
is left is what was said and how it sounds, but the path may also hide errors by matching a frame
to a similar one nearby, so it is a lower bound of the content error).

Errors are in the field's natural quantizer index (|10 - 12| = 2 steps of pitch), accumulated as
sums and counts so utterances pool exactly.
"""
from __future__ import annotations

import numpy as np


def linear_pairs(n_ref: int, n_hyp: int) -> np.ndarray:
    """``[n_ref, 2]`` pairs ``(i, round(i * n_hyp / n_ref))`` (empty when either is empty)."""
    if n_ref == 0 or n_hyp == 0:
        return np.zeros((0, 2), dtype=np.int64)
    i = np.arange(n_ref)
    j = np.minimum(np.floor((i + 0.5) * n_hyp / n_ref).astype(np.int64), n_hyp - 1)
    return np.stack([i, j], 1)


def dtw_pairs(ref: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """The minimum-cost monotonic path ``[P, 2]`` from ``(0, 0)`` to ``(N-1, M-1)`` between feature
    rows ``ref [N, d]`` and ``hyp [M, d]`` (Euclidean frame distance; steps right, down, diagonal)."""
    N, M = len(ref), len(hyp)
    if N == 0 or M == 0:
        return np.zeros((0, 2), dtype=np.int64)
    cost = np.sqrt(((ref[:, None, :] - hyp[None, :, :]) ** 2).sum(-1))
    acc = np.full((N + 1, M + 1), np.inf)
    acc[0, 0] = 0.0
    for i in range(1, N + 1):
        c = cost[i - 1]
        # vertical and diagonal moves vectorized; the horizontal one is a running minimum along the row
        best = np.minimum(acc[i - 1, 1:], acc[i - 1, :-1]) + c
        row = acc[i]
        for j in range(1, M + 1):
            row[j] = min(best[j - 1], row[j - 1] + c[j - 1])
    path = []
    i, j = N, M
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = int(np.argmin([acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]]))
        i, j = (i - 1, j - 1) if step == 0 else (i - 1, j) if step == 1 else (i, j - 1)
    return np.asarray(path[::-1], dtype=np.int64)


def field_features(fields: dict[str, np.ndarray], levels: dict[str, int]) -> np.ndarray:
    """``[F, n_fields]``: each field's index scaled to [0, 1] by its number of levels (the DTW distance)."""
    return np.stack([fields[n] / max(levels[n] - 1, 1) for n in levels], 1).astype(np.float64)


class FieldErrors:
    """Pooled accuracy and mean absolute index error per field, overall and per position bin: the
    reference frame's relative position ``i / N`` in ``bins`` equal bins, or with ``frame_bin`` its
    absolute frame ``i // frame_bin`` (the last bin then holds every later frame)."""

    def __init__(self, names: list[str], bins: int = 10, frame_bin: int | None = None) -> None:
        self.names, self.bins, self.frame_bin = list(names), bins, frame_bin
        self.n = np.zeros(bins)
        self.correct = {n: np.zeros(bins) for n in names}
        self.abs_err = {n: np.zeros(bins) for n in names}

    def add(self, ref: dict[str, np.ndarray], hyp: dict[str, np.ndarray], pairs: np.ndarray | None = None) -> None:
        """Add one utterance: ``pairs [P, 2]`` of (reference frame, hypothesis frame); None: frame by frame."""
        n_ref = len(ref[self.names[0]])
        if pairs is None:
            if len(hyp[self.names[0]]) != n_ref:
                raise ValueError("field errors: frame-by-frame needs equal lengths; give alignment pairs")
            pairs = np.stack([np.arange(n_ref)] * 2, 1)
        if len(pairs) == 0:
            return
        if self.frame_bin:
            b = np.minimum(pairs[:, 0] // self.frame_bin, self.bins - 1)
        else:
            b = np.minimum((pairs[:, 0] * self.bins) // max(n_ref, 1), self.bins - 1)
        self.n += np.bincount(b, minlength=self.bins)
        for name in self.names:
            r, h = ref[name][pairs[:, 0]], hyp[name][pairs[:, 1]]
            self.correct[name] += np.bincount(b, weights=(r == h).astype(np.float64), minlength=self.bins)
            self.abs_err[name] += np.bincount(b, weights=np.abs(r.astype(np.float64) - h), minlength=self.bins)

    def summary(self) -> dict[str, dict[str, float]]:
        """Field -> ``{"acc", "mae"}`` over all frames."""
        total = max(self.n.sum(), 1.0)
        return {n: {"acc": float(self.correct[n].sum() / total), "mae": float(self.abs_err[n].sum() / total)}
                for n in self.names}

    def drift(self) -> dict[str, list[float | None]]:
        """Field -> mean absolute error per position bin (None for an empty bin)."""
        return {n: [float(e / c) if c else None for e, c in zip(self.abs_err[n], self.n)] for n in self.names}

    @property
    def frames(self) -> int:
        return int(self.n.sum())


__all__ = ["linear_pairs", "dtw_pairs", "field_features", "FieldErrors"]

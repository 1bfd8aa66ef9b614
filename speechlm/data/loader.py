"""From the global batch stream to this rank's :class:`~speechlm.data.batch.Batch` objects.

The sampler (main process) names the examples of each batch; a torch ``DataLoader`` reads and
builds them (in ``num_workers`` processes when asked). Each batch carries its global number in
``batch.meta["index"]``, so the trainer knows exactly how far the data went, whatever the loader
prefetched.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable, Iterator

import torch

from speechlm.data.batch import Batch, collate
from speechlm.data.dataset import MultiTaskData
from speechlm.data.sampler import BucketSampler, Key, fixed_batches

log = logging.getLogger(__name__)


class BatchReader(torch.utils.data.Dataset):
    """Reads ``(g, [(entry, index), ...])`` into a right-padded Batch."""

    def __init__(self, data: MultiTaskData, pad_id: int = 0) -> None:
        self.data, self.pad_id = data, pad_id

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs the method
        return len(self.data)

    def __getitem__(self, item: tuple[int, list[Key]]) -> Batch:
        g, keys = item
        examples = [self.data.example(d, i) for d, i in keys]
        batch = collate(examples, self.pad_id)
        batch.meta["index"] = g
        batch.meta["entries"] = [d for d, _ in keys]
        batch.meta["example_lengths"] = [len(e) for e in examples]
        return batch


def _identity(x):
    return x


def make_loader(reader: BatchReader, items: Iterable[tuple[int, list[Key]]], num_workers: int = 0,
                prefetch: int = 2) -> torch.utils.data.DataLoader:
    """A DataLoader over ready-made batch descriptions (one Batch per item, in order)."""
    # its own generator: creating a loader must not draw from the global torch RNG (a resumed
    # run creates its loader at another point of the RNG stream than an uninterrupted one)
    kwargs = {"num_workers": num_workers, "collate_fn": _identity, "batch_size": None, "sampler": items,
              "generator": torch.Generator().manual_seed(0)}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch, persistent_workers=False)
    return torch.utils.data.DataLoader(reader, **kwargs)


def train_batches(data: MultiTaskData, sampler: BucketSampler, start: int, rank: int, world_size: int,
                  num_workers: int = 0, pad_id: int = 0) -> Iterator[Batch]:
    """This rank's endless training batches from global batch ``start`` on."""
    reader = BatchReader(data, pad_id)
    yield from make_loader(reader, sampler.rank_batches(start, rank, world_size), num_workers)


def valid_batches(data: MultiTaskData, max_tokens: int, rank: int, world_size: int, num_workers: int = 0,
                  pad_id: int = 0, max_batch_size: int | None = None) -> Iterator[tuple[Batch, bool]]:
    """Every validation example once, sharded over ranks: ``(batch, counts)``.

    Ranks get the same number of batches (FSDP needs every rank in every forward); a rank with
    nothing left repeats its first batch with ``counts=False`` (the caller drops its stats).
    """
    batches = fixed_batches(data.lengths(), max_tokens, max_batch_size)
    n = -(-len(batches) // world_size)  # ceil
    mine = [(g, batches[g]) for g in range(rank, len(batches), world_size)]
    counts = [True] * len(mine) + [False] * (n - len(mine))
    mine += [(rank % len(batches), batches[rank % len(batches)])] * (n - len(mine))
    reader = BatchReader(data, pad_id)
    for batch, c in zip(make_loader(reader, mine, num_workers), counts):
        yield batch, c


class MixMeter:
    """Counts examples and tokens per entry in consumed batches (the observed mix)."""

    def __init__(self, names: list[str], weights: list[float]) -> None:
        total = sum(weights)
        self.names, self.weights = names, [w / total for w in weights]
        self.examples: Counter = Counter()
        self.tokens: Counter = Counter()

    def update(self, batch: Batch) -> None:
        for d, n in zip(batch.meta.get("entries", []), batch.meta.get("example_lengths", [])):
            self.examples[d] += 1
            self.tokens[d] += n

    def merge(self, counts: list[int]) -> None:
        """Replace example counts by ``counts`` (e.g. summed over ranks)."""
        self.examples = Counter(dict(enumerate(counts)))

    def report(self) -> str:
        total = sum(self.examples.values()) or 1
        return ", ".join(
            f"{name} {self.examples[d] / total:.3f} (weight {w:.3f})"
            for d, (name, w) in enumerate(zip(self.names, self.weights))
        )


__all__ = ["BatchReader", "make_loader", "train_batches", "valid_batches", "MixMeter"]

"""Training data over one or more ``task:name:dumpdir:weight`` entries, indexed lazily.

Each entry is a manifest dir written by ``speechlm prepare`` + ``speechlm tokenize``::

    dumpdir/manifest.jsonl          ids and speakers (streamed once, never held as dicts)
    dumpdir/template.yaml           the resolved task template
    dumpdir/tokens/<segment>.scp    kaldiio, int32 [frames, streams] local ids per utterance
    dumpdir/tokens/<segment>.lengths

The index keeps numpy arrays only (ids as bytes, archive file number + byte offset per segment,
sequence length, speaker number), about 130 bytes per example of a two-segment task; tokens are
read from the archives when an example is built. Examples whose sequence would exceed the
model's context are dropped from the index with one counted warning (never truncated); so are
examples without tokens, and speaker-prompted examples whose speaker has no other utterance.

Example:
    >>> data = MultiTaskData([DataSpec.parse("asr:mini:dump/train/asr:1.0")], vocab, n_streams=4)
    >>> ex = data.example(0, 17)   # entry 0, example 17 -> sequence.Example
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from speechlm.data.manifest import read_manifest
from speechlm.data.sequence import Example, build_example, drop_conditions, segment_kind
from speechlm.data.token_archive import ArchiveIndex, read_lengths
from speechlm.tasks import TaskTemplate
from speechlm.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataSpec:
    """One ``task:name:dumpdir:weight`` entry (weight optional, default 1)."""

    task: str
    name: str
    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "DataSpec":
        parts = text.split(":")
        weight = 1.0
        if len(parts) >= 4:
            try:
                weight = float(parts[-1])
                parts = parts[:-1]
            except ValueError:
                pass
        if len(parts) < 3:
            raise ValueError(
                f"data entry {text!r} should be task:name:dumpdir[:weight], e.g. asr:mini:dump/train/asr:1.0"
            )
        task, name, path = parts[0], parts[1], ":".join(parts[2:])
        if weight <= 0:
            raise ValueError(f"data entry {text!r}: weight must be > 0, got {weight}")
        return cls(task, name, path, weight)

    @property
    def key(self) -> str:
        return f"{self.task}:{self.name}"


#: ``rows(kind, frames, n_streams) -> rows``: how many model positions a segment of ``frames``
#: takes (a stream pattern may add rows, e.g. delay, or multiply them, e.g. flat).
RowsFn = Callable[[int, np.ndarray, int], np.ndarray]


def plain_rows(kind: int, frames: np.ndarray, n_streams: int) -> np.ndarray:
    return frames


class TaskData:
    """The index of one ``task:name:dumpdir`` entry; builds its examples on demand.

    ``max_len`` is the model context in positions as counted by ``rows`` (default: one position
    per frame); longer examples are skipped and counted in ``n_too_long``.
    """

    def __init__(self, spec: DataSpec, vocab: Vocabulary, n_streams: int, max_len: int | None = None,
                 seed: int = 0, rows: RowsFn = plain_rows) -> None:
        self.spec, self.vocab, self.n_streams, self.seed = spec, vocab, n_streams, seed
        root = Path(spec.path)
        self.template, examples = read_manifest(root)
        t: TaskTemplate = self.template
        if t.name != spec.task:
            raise ValueError(f"{spec.path}: manifest is for task {t.name!r}, but the data entry says {spec.task!r}")
        ids, spks, spk_no = [], [], {}
        for ex in examples:
            ids.append(ex["id"])
            spks.append(spk_no.setdefault(ex.get("spk", ex["id"]), len(spk_no)))
        self.speakers = list(spk_no)
        ids_arr = np.array(ids, dtype=np.bytes_)
        del ids
        spk_arr = np.array(spks, dtype=np.int32)
        del spks
        length = np.full(len(ids_arr), 2, dtype=np.int64)  # task token + <eos>
        keep = np.ones(len(ids_arr), dtype=bool)
        self.archives: dict[str, ArchiveIndex] = {}
        tok_dir = root / "tokens"
        for seg in t.segments:
            kind = segment_kind(seg, any(seg is x for x in t.targets))
            n = vocab.n_streams(seg.tokenizer)
            if seg.modality == "spk_prompt":  # an upper bound: the prompt is at most max_frames
                length += 1 + int(rows(kind, np.array([int(seg.max_frames or 0)]), n)[0])
                continue
            scp, lens_file = tok_dir / f"{seg.name}.scp", tok_dir / f"{seg.name}.lengths"
            for f in (scp, lens_file):
                if not f.is_file():
                    raise FileNotFoundError(f"{f} not found: run `speechlm tokenize --manifest-dir {root}` first")
            arch = ArchiveIndex(scp, ids_arr)
            lens = read_lengths(lens_file, ids_arr)
            keep &= arch.present & (lens >= 0)
            length += 1 + rows(kind, np.maximum(lens, 0), n)
            self.archives[seg.name] = arch
        self.n_untokenized = int((~keep).sum())
        if self.n_untokenized:
            log.warning("%s: %d of %d examples lack tokens or lengths in %s; they are skipped",
                        spec.key, self.n_untokenized, len(ids_arr), tok_dir)
        self.ids, self.spk, self.lengths = ids_arr, spk_arr, length
        self._prompt = None
        self.n_no_prompt = 0
        if any(s.modality == "spk_prompt" for s in t.segments):
            from speechlm.data.prompt_index import SpeakerPrompts

            self._prompt = SpeakerPrompts(self)
            lonely = keep & ~self._prompt.usable()
            self.n_no_prompt = int(lonely.sum())
            if self.n_no_prompt:
                alone = sorted({self.speakers[k] for k in spk_arr[lonely]})
                log.warning("%s: skipping %d examples whose speaker has no other utterance for a prompt (a "
                            "prompt is never the utterance itself): speaker(s) %s", spec.key, self.n_no_prompt,
                            ", ".join(alone[:10]) + (" ..." if len(alone) > 10 else ""))
            keep &= ~lonely
        self.n_too_long = 0
        if max_len is not None:
            too_long = keep & (length > max_len)
            self.n_too_long = int(too_long.sum())
            if self.n_too_long:
                log.warning("%s: skipping %d examples longer than the model context (%d positions); "
                            "longest is %d (never truncated)", spec.key, self.n_too_long, max_len, int(length.max()))
            keep &= ~too_long
        self.rows = np.flatnonzero(keep)  # example number -> row of the arrays above
        kept = length[self.rows]
        # the length summary (what stage 7's stats.json held) where it is read: the training log
        summary = (f"; sequence length min {kept.min()}, median {int(np.median(kept))}, p90 "
                   f"{int(np.percentile(kept, 90))}, max {kept.max()}" if len(kept) else "")
        log.info("%s: %d examples indexed from %s (%s)%s", spec.key, len(self), root,
                 ", ".join(s.name for s in t.segments), summary)

    def __len__(self) -> int:
        return len(self.rows)

    def seq_lengths(self) -> np.ndarray:
        """Sequence length (upper bound for speaker prompts) of each kept example."""
        return self.lengths[self.rows]

    def utt_id(self, i: int) -> str:
        return self.ids[self.rows[i]].decode()

    def tokens(self, row: int, segment: str) -> np.ndarray:
        """Local tokens of ``segment`` for array row ``row`` (read lazily from the archive)."""
        try:
            return self.archives[segment].load(row)
        except Exception as e:
            raise RuntimeError(f"{self.spec.key}: cannot read {segment!r} of {self.ids[row].decode()!r} "
                               f"from {self.archives[segment].scp}: {e}") from e

    def text_ids(self) -> set[int]:
        """Global ids of every token the kept examples' one-stream (text) segments hold."""
        out: set[int] = set()
        for seg in self.template.segments:
            if seg.name not in self.archives or self.vocab.n_streams(seg.tokenizer) != 1:
                continue
            start = self.vocab.offset(seg.tokenizer)
            for row in self.rows:
                out.update((self.tokens(int(row), seg.name).reshape(-1).astype(np.int64) + start).tolist())
        return out

    def example(self, i: int, epoch: int = 0, segments_of: dict[str, int] | None = None) -> Example:
        """Build the training sequence of kept example ``i`` in its ``epoch``-th use.

        The epoch varies the speaker prompt and, with the template's ``condition_dropout``, whether
        the conditions are left empty (markers kept, tokens dropped: the unconditional sequence
        classifier-free guidance needs); both are pure functions of (seed, utterance, epoch).
        ``segments_of`` takes the named segments from other kept examples instead (segment name ->
        example index): e.g. another sentence's text, or a speaker prompt of another example's
        speaker, to measure how much a model reads it.
        """
        row = int(self.rows[i])
        utt = self.ids[row].decode()
        t = self.template
        drop = t.condition_dropout > 0 and np.random.default_rng(
            [self.seed, epoch, zlib.crc32(self.ids[row]), 2]).random() < t.condition_dropout
        segs: dict[str, np.ndarray] = {}
        for seg in t.segments:
            src = int(self.rows[segments_of[seg.name]]) if segments_of and seg.name in segments_of else row
            if seg.modality == "spk_prompt":
                segs[seg.name] = self._prompt.prompt(src, seg, epoch)
            else:
                segs[seg.name] = self.tokens(src, seg.name)
        ex = build_example(utt, t, segs, self.vocab, self.n_streams)
        if drop:  # the same rule decoding uses for the unconditional branch of guidance
            ex = drop_conditions(ex)
        ex.id = f"{self.spec.key}/{utt}"
        return ex


class MultiTaskData:
    """All entries of a run; examples are addressed as ``(entry, index)``."""

    def __init__(self, specs: list[DataSpec], vocab: Vocabulary, n_streams: int, max_len: int | None = None,
                 seed: int = 0, rows: RowsFn = plain_rows, drop_empty: bool = False) -> None:
        """``drop_empty``: leave out entries with no usable example (with a warning) instead of failing
        (for validation sets, where e.g. no speaker may have a second utterance for a prompt)."""
        if not specs:
            raise ValueError("no data entries given (use --data task:name:dumpdir:weight)")
        keys = [s.key for s in specs]
        dup = {k for k in keys if keys.count(k) > 1}
        if dup:
            raise ValueError(f"data entries repeat task:name {sorted(dup)}; give each entry its own name")
        entries = [TaskData(s, vocab, n_streams, max_len, seed, rows) for s in specs]
        for s, e in zip(specs, entries):
            if len(e) == 0:
                if not drop_empty:
                    raise ValueError(f"data entry {s.key} ({s.path}) has no usable example")
                log.warning("data entry %s (%s) has no usable example; leaving it out", s.key, s.path)
        self.entries = [e for e in entries if len(e)]
        self.specs = [e.spec for e in self.entries]
        if not self.entries:
            raise ValueError(f"no usable example in any of {', '.join(keys)}")

    @property
    def weights(self) -> np.ndarray:
        w = np.array([s.weight for s in self.specs], dtype=np.float64)
        return w / w.sum()

    @property
    def n_too_long(self) -> int:
        return sum(e.n_too_long for e in self.entries)

    def lengths(self) -> list[np.ndarray]:
        return [e.seq_lengths() for e in self.entries]

    def text_ids(self) -> list[int]:
        """Sorted global ids of every text token the entries' examples hold."""
        return sorted(set().union(*(e.text_ids() for e in self.entries)))

    def example(self, entry: int, draw: int) -> Example:
        """Example ``draw % len`` of ``entry`` in epoch ``draw // len`` (sampler keys are draws)."""
        n = len(self.entries[entry])
        return self.entries[entry].example(draw % n, draw // n)

    def __len__(self) -> int:
        return sum(len(e) for e in self.entries)


__all__ = ["DataSpec", "TaskData", "MultiTaskData"]

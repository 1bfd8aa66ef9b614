"""Speaker prompts for ``spk_prompt`` segments, chosen lazily from the dataset's own archives.

A speaker prompt is audio of *another* utterance of the same speaker (from ``utt2spk``, kept in
the manifest as ``spk``), cut to the segment's ``max_frames``. The tokens come from the template's
audio segment that uses the same tokenizer (for TTS: the target ``speech``). The choice of the
other utterance and of the crop depends only on the run seed, the entry and the utterance id, so
it is the same on every rank, in every worker and after a resume.

When ``speechlm.data.speaker_prompt`` (the tokenizer part) provides ``choose_prompt``, that choice
is used; otherwise the rule above.
"""
from __future__ import annotations

import logging

import numpy as np

from speechlm.tasks import Segment

log = logging.getLogger(__name__)


def _external_chooser():
    try:
        from speechlm.data import speaker_prompt
    except ImportError:
        return None
    return getattr(speaker_prompt, "choose_prompt", None)


class SpeakerPrompts:
    """Index speaker -> rows of a :class:`~speechlm.data.dataset.TaskData`, without dicts."""

    def __init__(self, data) -> None:
        self.data = data
        order = np.argsort(data.spk, kind="stable")
        self.by_spk = order  # rows grouped by speaker
        self.start = np.searchsorted(data.spk[order], np.arange(len(data.speakers) + 1))
        audio = [s for s in data.template.segments if s.modality == "audio"]
        self.source: dict[str, str] = {}
        for seg in data.template.segments:
            if seg.modality != "spk_prompt":
                continue
            same = [a.name for a in audio if a.tokenizer == seg.tokenizer]
            if not same:
                raise ValueError(f"task {data.template.name!r}: speaker prompt {seg.name!r} uses tokenizer "
                                 f"{seg.tokenizer!r} but no audio segment of the task does; cannot take prompts")
            self.source[seg.name] = same[0]
        self._choose = _external_chooser()

    def candidates(self, row: int) -> np.ndarray:
        """Rows of the same speaker as ``row``, except ``row`` itself when it is not alone."""
        k = int(self.data.spk[row])
        rows = self.by_spk[self.start[k]:self.start[k + 1]]
        others = rows[rows != row]
        return others if len(others) else rows

    def prompt(self, row: int, seg: Segment) -> np.ndarray:
        """Local tokens ``[<=max_frames, streams]`` of the prompt for ``row``."""
        rng = np.random.default_rng(self.data.seed_for(row))
        cands = self.candidates(row)
        cands = cands[self.data.archives[self.source[seg.name]].present[cands]]
        if not len(cands):
            raise ValueError(f"{self.data.spec.key}: no tokenized utterance of speaker "
                             f"{self.data.speakers[self.data.spk[row]]!r} for the prompt of {self.data.ids[row].decode()!r}")
        if self._choose is not None:
            ids = [self.data.ids[r].decode() for r in cands]
            pick = self._choose(self.data.ids[row].decode(), ids, rng)
            other = int(cands[ids.index(pick)]) if isinstance(pick, str) else int(cands[int(pick)])
        else:
            other = int(cands[rng.integers(len(cands))])
        tokens = self.data.tokens(other, self.source[seg.name])
        n = int(seg.max_frames or len(tokens))
        if len(tokens) > n:
            start = int(rng.integers(len(tokens) - n + 1))
            tokens = tokens[start:start + n]
        return tokens


__all__ = ["SpeakerPrompts"]

"""Speaker prompts for ``spk_prompt`` segments of a dataset entry, over its token archives.

The choice itself is :class:`speechlm.data.speaker_prompt.SpeakerPrompt` (another utterance of
the same speaker, a window of ``max_frames``, a pure function of seed and utterance). This module
connects it to a :class:`~speechlm.data.dataset.TaskData`: the prompt's tokens come from the
template's audio segment with the same tokenizer (for TTS: the target ``speech``), and examples
whose speaker has no other tokenized utterance are dropped when indexing (counted), since a
prompt must never be the target itself.
"""
from __future__ import annotations

import logging

import numpy as np

from speechlm.data.speaker_prompt import SpeakerPrompt, prompt_source
from speechlm.tasks import Segment

log = logging.getLogger(__name__)


class SpeakerPrompts:
    """Prompt tokens for the rows of one dataset entry (built lazily, per process)."""

    def __init__(self, data) -> None:
        self.data = data
        self.source: dict[str, str] = {seg.name: prompt_source(data.template, seg)
                                       for seg in data.template.segments if seg.modality == "spk_prompt"}
        self._order = np.argsort(data.ids, kind="stable")
        self._impl: dict[str, SpeakerPrompt] = {}

    def usable(self) -> np.ndarray:
        """Rows whose speaker has another utterance with tokens for every prompt segment."""
        ok = np.ones(len(self.data.ids), dtype=bool)
        for src in set(self.source.values()):
            present = self.data.archives[src].present
            per_spk = np.bincount(self.data.spk[present], minlength=len(self.data.speakers))
            ok &= (per_spk[self.data.spk] - present.astype(np.int64)) >= 1
        return ok

    def _row(self, utt: str) -> int:
        ids = self.data.ids
        k = int(np.searchsorted(ids[self._order], utt.encode()))
        return int(self._order[k])

    def _chooser(self, seg: Segment) -> SpeakerPrompt:
        if seg.name not in self._impl:
            src = self.source[seg.name]
            present = np.flatnonzero(self.data.archives[src].present)
            utt2spk = {self.data.ids[r].decode(): self.data.speakers[self.data.spk[r]] for r in present}
            self._impl[seg.name] = SpeakerPrompt(
                utt2spk, lambda utt, src=src: self.data.tokens(self._row(utt), src),
                max_frames=int(seg.max_frames or 10 ** 9), seed=self.data.seed)
        return self._impl[seg.name]

    def prompt(self, row: int, seg: Segment, epoch: int = 0) -> np.ndarray:
        """Local tokens ``[<=max_frames, streams]`` of the prompt for ``row`` in ``epoch``."""
        utt = self.data.ids[row].decode()
        tokens = self._chooser(seg)(utt, epoch)
        if tokens is None:  # filtered out by usable(); only reachable if archives changed
            raise ValueError(f"{self.data.spec.key}: no other tokenized utterance of speaker "
                             f"{self.data.speakers[self.data.spk[row]]!r} to prompt {utt!r}")
        return tokens

    def __getstate__(self) -> dict:  # workers rebuild the chooser lazily
        return {**self.__dict__, "_impl": {}}


__all__ = ["SpeakerPrompts"]

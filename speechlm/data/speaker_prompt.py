"""Speaker prompts: tokens of a *different* utterance of the same speaker, cut to a fixed length.

A TTS or voice-conversion task conditions on a few seconds of the target voice. The prompt
must not be the target itself (the model would learn to copy), so it is taken from another
utterance of the speaker (``utt2spk`` or the manifest's ``spk``), and a random window of
``max_frames`` frames of it is used. Every choice is a pure function of (seed, epoch, utt), so
workers, resumed runs and repeated calls agree.

This is the one rule for training (:mod:`speechlm.data.prompt_index`) and decoding
(:mod:`speechlm.infer.runner`): the same choice of utterance and window for the same seed, and
never the utterance itself. A speaker with no other utterance gives no prompt (None): training
drops such examples (counted, named in a warning), decoding lists them in its ``failed`` file.

Example:
    >>> prompts = SpeakerPrompt({"a1": "A", "a2": "A"}, lambda u: np.zeros((400, 8), np.int32), max_frames=150)
    >>> prompts("a1").shape
    (150, 8)
    >>> prompts.choose("a1")
    'a2'
"""
from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Collection, Mapping

import numpy as np

log = logging.getLogger(__name__)


class SpeakerPrompt:
    """Pick and cut speaker prompts.

    Args:
        utt2spk: utterance id -> speaker id.
        get_tokens: utterance id -> its tokens ``[frames, streams]`` (e.g. a token archive reader).
        max_frames: prompt length; shorter utterances are used whole.
        seed: the run seed.
        allow_self: when the speaker has no other usable utterance, use the utterance itself
            (True) or return None (False, the caller drops the example).
        available: utterance ids that have tokens (default: all of ``utt2spk``); others are never chosen.
    """

    def __init__(
        self,
        utt2spk: Mapping[str, str],
        get_tokens: Callable[[str], np.ndarray],
        max_frames: int,
        seed: int = 0,
        allow_self: bool = False,
        available: Collection[str] | None = None,
    ) -> None:
        if max_frames < 1:
            raise ValueError(f"speaker prompt: max_frames must be >= 1, got {max_frames}")
        self.utt2spk, self.get_tokens = utt2spk, get_tokens
        self.max_frames, self.seed, self.allow_self = int(max_frames), int(seed), allow_self
        ok = set(available) if available is not None else None
        self.spk2utt: dict[str, list[str]] = {}
        for utt in sorted(utt2spk):
            if ok is None or utt in ok:
                self.spk2utt.setdefault(utt2spk[utt], []).append(utt)
        self.n_self = 0  # prompts that had to come from the utterance itself

    @classmethod
    def from_utt2spk_file(cls, path: str | os.PathLike, get_tokens: Callable[[str], np.ndarray],
                          max_frames: int, **kwargs) -> "SpeakerPrompt":
        """Read a Kaldi ``utt2spk`` file (``utt spk`` lines); errors name the file and line."""
        utt2spk: dict[str, str] = {}
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                parts = line.split()
                if len(parts) != 2:
                    raise ValueError(f"{path}:{i}: expected 'utt spk', got {line.rstrip()!r}")
                utt2spk[parts[0]] = parts[1]
        return cls(utt2spk, get_tokens, max_frames, **kwargs)

    def _rng(self, utt: str, epoch: int, purpose: int) -> np.random.Generator:
        return prompt_rng(self.seed, utt, epoch, purpose)

    def choose(self, utt: str, epoch: int = 0) -> str | None:
        """The utterance whose tokens prompt ``utt`` (None if there is none)."""
        spk = self.utt2spk.get(utt)
        if spk is None:
            raise KeyError(f"speaker prompt: utterance {utt!r} has no speaker in utt2spk")
        others = [u for u in self.spk2utt.get(spk, []) if u != utt]
        if others:
            return others[int(self._rng(utt, epoch, 0).integers(len(others)))]
        if self.allow_self:
            self.n_self += 1
            if self.n_self == 1:
                log.warning("speaker %s has only utterance %s; prompting it with itself (allow_self=True)", spk, utt)
            return utt
        return None

    def __call__(self, utt: str, epoch: int = 0) -> np.ndarray | None:
        """The prompt tokens for ``utt``: at most ``max_frames`` frames of another utterance."""
        other = self.choose(utt, epoch)
        if other is None:
            return None
        tokens = np.asarray(self.get_tokens(other))
        if len(tokens) <= self.max_frames:
            return tokens
        start = int(self._rng(utt, epoch, 1).integers(len(tokens) - self.max_frames + 1))
        return tokens[start:start + self.max_frames]


def prompt_rng(seed: int, utt: str, epoch: int, purpose: int) -> np.random.Generator:
    """The generator of one choice (``purpose`` 0: which utterance, 1: which window) for ``utt``."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), zlib.crc32(utt.encode("utf-8")), purpose])


def prompt_source(template, seg) -> str:
    """The name of the audio segment of ``template`` whose tokens prompt spk_prompt segment ``seg``:
    the first audio segment with the same tokenizer (for TTS: the target speech)."""
    same = [a.name for a in template.segments if a.modality == "audio" and a.tokenizer == seg.tokenizer]
    if not same:
        raise ValueError(f"task {template.name!r}: speaker prompt {seg.name!r} uses tokenizer {seg.tokenizer!r} "
                         f"but no audio segment of the task does; cannot take prompts")
    return same[0]


def speakers_with_one_utterance(utt2spk: Mapping[str, str]) -> list[str]:
    """Speakers that can only be prompted with the target itself (worth a warning in data checks)."""
    counts: dict[str, int] = {}
    for spk in utt2spk.values():
        counts[spk] = counts.get(spk, 0) + 1
    return sorted(s for s, n in counts.items() if n == 1)


__all__ = ["SpeakerPrompt", "speakers_with_one_utterance", "prompt_source", "prompt_rng"]

"""Decoding that follows a rule: a row's target may take only what its :class:`Follower` allows.

:class:`SpanFollower`: inside spans of a text target (from an opening token to a closing one),
only given tokens: the agent's call values may hold only words the user said or a tool returned
(:mod:`speechlm.agent.loop`). :class:`PrefixFollower`: a target that starts with given tokens
(the agent's inner monologue, when the model's asr task heard the words).

Phone following: a target's phone stream walks through the text's phones in order.

A TTS target led by a phone stream (:mod:`speechlm.tokenizers.codec2_phones`) says, frame by frame,
which phone it speaks. Left free, the model's phone stream wanders off the text (the mini recipe's
one-voice model: a difflib ratio of 0.39 between its phone sequence and the text's).
:class:`PhoneFollower` allows a row's phone stream only what continues the text: the phone it is
in or the next one, silence for at most ``max_silence`` frames in a row until the last phone (a
model that wants to stop early would otherwise fill the rest with silence), and lets the row end
only once the last phone is reached. The model still decides how long each phone lasts (within
``max_stretch``) and how it sounds.
"""
from __future__ import annotations

from collections.abc import Sequence

from speechlm.config import ConfigError
from speechlm.models.next_phone import SILENCE, phone_runs


class Follower:
    """The rule one row's target follows (``RowState.follower``); these defaults constrain nothing."""

    def applies(self, tokenizer: str, stream: int) -> bool:
        """Whether the rule governs ``tokenizer``'s stream ``stream``."""
        return False

    def allowed(self) -> list[int] | None:
        """Local ids the next token may take (None: any)."""
        return None

    def may_end(self) -> bool:
        return True

    def observe(self, value: int) -> None:
        """Record the local id the row took."""

    def pace(self, predicted: int) -> None:
        """The target's predicted length (frames)."""

    def length(self, j: int, predicted: int) -> int:
        """The target length the progress input is told at frame ``j``."""
        return predicted

    def next_phone(self) -> int:
        return -1


class SpanFollower(Follower):
    """Text target ``tokenizer``: after a token of ``opens`` and until one of ``closes`` (or the
    end), only the tokens of ``inside`` (or a closing token) may follow (local ids)."""

    def __init__(self, tokenizer: str, opens: Sequence[int], closes: Sequence[int], inside: Sequence[int]) -> None:
        self.tokenizer, self.opens, self.closes = tokenizer, frozenset(opens), frozenset(closes)
        self.inside = sorted(set(inside) | self.closes)
        self.open = False

    def applies(self, tokenizer: str, stream: int) -> bool:
        return tokenizer == self.tokenizer and stream == 0

    def allowed(self) -> list[int] | None:
        return self.inside if self.open else None

    def observe(self, value: int) -> None:
        if value in self.opens:
            self.open = True
        elif value in self.closes:
            self.open = False


class PrefixFollower(Follower):
    """Text target ``tokenizer``: exactly the tokens of ``prefix`` first (local ids), then anything."""

    def __init__(self, tokenizer: str, prefix: Sequence[int]) -> None:
        self.tokenizer, self.prefix, self.n = tokenizer, list(prefix), 0

    def applies(self, tokenizer: str, stream: int) -> bool:
        return tokenizer == self.tokenizer and stream == 0

    def allowed(self) -> list[int] | None:
        return [self.prefix[self.n]] if self.n < len(self.prefix) else None

    def may_end(self) -> bool:
        return self.n >= len(self.prefix)

    def observe(self, value: int) -> None:
        self.n += 1


class PhoneFollower(Follower):
    """Stream ``stream`` of target tokenizer ``tokenizer`` must spell ``phones`` (local ids, runs of
    one phone merged) in order, every phone for at least one frame, with runs of ``silence``."""

    def __init__(self, tokenizer: str, stream: int, phones: Sequence[int], silence: int = SILENCE,
                 max_silence: int = 10, max_stretch: float = 0.0) -> None:
        self.tokenizer, self.stream, self.silence = tokenizer, stream, silence
        self.max_silence, self.max_stretch = max_silence, max_stretch
        self.phones = phone_runs(phones, silence)
        self.pos = -1  # index of the phone being spoken (-1: none yet)
        self.quiet = 0  # silent frames in a row
        self.held = 0  # frames since the current phone began
        self.max_held = 10 ** 9  # frames a phone may last (set by pace())

    def pace(self, predicted: int) -> None:
        """The target's predicted length (frames): with ``max_stretch``, no phone but the last may
        last more than that many times the mean frames per phone."""
        if self.max_stretch > 0 and self.phones:
            self.max_held = max(2, round(self.max_stretch * predicted / len(self.phones)))

    def applies(self, tokenizer: str, stream: int) -> bool:
        return tokenizer == self.tokenizer and stream == self.stream

    def allowed(self) -> list[int]:
        """Phone ids the next frame may take."""
        nxt = self.phones[self.pos + 1: self.pos + 2]
        if nxt and self.pos >= 0 and self.held >= self.max_held:
            return nxt  # held too long: move on
        out = set(nxt)
        if self.quiet < self.max_silence or self.may_end():
            out.add(self.silence)
        if self.pos >= 0:
            out.add(self.phones[self.pos])
        return sorted(out)

    def may_end(self) -> bool:
        """Every phone is reached."""
        return self.pos >= len(self.phones) - 1

    def length(self, j: int, predicted: int) -> int:
        """The target length a model with the progress input is told at frame ``j``: the predicted
        one, stretched while phones are left at its pace (frames per phone), so that the model is
        never told it is done before the text is."""
        n = len(self.phones)
        if not n:
            return predicted
        return max(predicted, j + 1 + round((n - 1 - self.pos) * predicted / n))

    def next_phone(self) -> int:
        """The phone after the current one (-1: none left)."""
        return self.phones[self.pos + 1] if self.pos + 1 < len(self.phones) else -1

    def observe(self, value: int) -> None:
        """Record the frame's phone: the next phone moves the pointer, silence or the same stays."""
        self.quiet = self.quiet + 1 if value == self.silence else 0
        self.held += 1
        if self.pos + 1 < len(self.phones) and self.phones[self.pos + 1] == value:
            self.pos, self.held = self.pos + 1, 1


def prompt_followers(vocab, prompts, targets: list[list[str]], config) -> list[PhoneFollower]:
    """``config.follow_phones``: a follower for each prompt row, holding stream 0 of the row's first
    target (a phone-led tokenizer such as ``codec2_phones``) to the phones of tokenizer
    ``config.follow_phones`` that its prompt holds (a condition spelled by ``espeak_phones``)."""
    name = config.follow_phones
    if name not in vocab.ranges or vocab.n_streams(name) != 1:
        raise ConfigError(f"decode: follow_phones: {name!r} must be a one-stream tokenizer of the model (the one "
                          f"spelling the phones of the text condition, e.g. espeak_phones); it has: {', '.join(vocab.ranges)}")
    a, b = vocab.stream_range(name, 0)
    out = []
    for row, tgt in enumerate(targets):
        t = tgt[0]
        if vocab.n_streams(t) < 2 or vocab.stream_range(t, 0)[1] - vocab.stream_range(t, 0)[0] != b - a:
            raise ConfigError(f"decode: follow_phones: {prompts.ids[row]!r}: target {t!r} is not led by a phone "
                              f"stream of {name!r}'s phones (a codec2_phones target with an espeak_phones condition)")
        toks = prompts.tokens[row, : int(prompts.lengths[row]), 0]
        phones = (toks[(toks >= a) & (toks < b)] - a).tolist()
        out.append(PhoneFollower(t, 0, phones, max_silence=config.follow_max_silence,
                                 max_stretch=config.follow_max_stretch))
    return out


__all__ = ["Follower", "SpanFollower", "PrefixFollower", "PhoneFollower", "prompt_followers"]

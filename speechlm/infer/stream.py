"""Streaming decoding: the text pieces and audio chunks of one input as they are decoded.

A decode thread runs :func:`speechlm.infer.generate.sample_decode` with an ``on_step`` hook that
cuts the frames of the first target that became *final* out of the row's state and hands them
over a small queue (at most ``buffer`` blocks waiting, so a slow reader pauses the decoder instead
of piling audio up); the reader's iterator turns them into text pieces or audio chunks. The tokens
are the ones :meth:`Pipeline.generate` would give (same prompt, same decoder, same seed).

A target frame is final once every one of its streams is emitted (``RowState.final_frames``, for
any stream strategy); for the built-in ones (``n``: the target tokenizer's streams)::

    parallel, multiscale, text targets   when its row is emitted            (every step)
    flat                                  when its last stream is emitted    (every n steps)
    delay                                 when its last stream is emitted    (n - 1 steps after its stream 0)

        step:     0  1  2  3  4  5          frame 0 is final after step 2 (n = 3),
        stream 0  a0 a1 a2 a3 E  .          frame 1 after step 3, ...
        stream 1  .  b0 b1 b2 b3 .
        stream 2  .  .  c0 c1 c2 c3

    ar_nar (audio)                        only after the whole AR pass and the NAR pass that fills
                                          streams 1..: its chunks all arrive at the end (no
                                          earlier audio; the text of an ar_nar model streams)

Audio: a tokenizer with ``stream_decoder()`` (Codec 2, frame by frame with one decoder state)
decodes each block of new frames, so the chunks concatenated are the whole-utterance decode.
Other audio tokenizers decode each block with ``context`` frames of left context and keep the
samples of the new frames (samples near block boundaries may differ a little from the whole decode).

Text: the detokenized prefix is emitted up to its last whitespace (a word is held back until the
next one starts, since detokenizers may still change it: sentencepiece byte pieces, spacing of
punctuation); the rest comes when decoding ends, so ``"".join(pieces)`` is ``Pipeline.generate``'s
text.

Only ``search: greedy`` and ``search: sample`` stream (a beam's best hypothesis is not known before
the search ends; CTC greedy decoding is not left to right): other searches are a
:class:`StreamError`. Like :meth:`Pipeline.generate`, a stream decodes one hypothesis (``nbest`` 1).

Example:
    >>> lm = speechlm.load("exp/mini/packed")                             # doctest: +SKIP
    >>> for piece in lm.generate_stream("asr", speech="hello.wav"):       # doctest: +SKIP
    ...     print(piece, end="", flush=True)
    >>> stream = lm.tts_stream("hello world", chunk_frames=8)             # doctest: +SKIP
    >>> for chunk in stream:                                              # doctest: +SKIP
    ...     play(chunk, stream.sample_rate)
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections.abc import Iterator
from typing import Any, Self

import numpy as np
import torch

from speechlm.data.batch import Batch, collate
from speechlm.infer.config import DecodeConfig
from speechlm.infer.steps import RowState
from speechlm.tokenizers import AudioTokenizer

log = logging.getLogger(__name__)

STREAM_SEARCHES = ("greedy", "sample")


class StreamError(ValueError):
    """A task, target or decoding option that cannot stream; the message says what would."""


class _Closed(Exception):
    """Raised inside the decode thread when the reader closed the stream."""


_END = object()


class FrameCutter:
    """The frames of a row's first target segment that are final, a block at a time (see the
    module docstring for when a frame is final). Global ids ``[frames, n]``."""

    def __init__(self) -> None:
        self.done = 0  # frames handed out so far

    def new_frames(self, st: RowState) -> np.ndarray:
        """Frames that became final since the last call (empty while none did)."""
        if st.hyp.segments:  # the segment ended: its frames (unless a later pass fills some streams)
            frames = st.hyp.segments[0].frames
            if st.pattern.fills_later(frames.shape[1]):
                return _empty(frames.shape[1])
            out = frames[self.done:]
            self.done = len(frames)
            return out
        if st.pattern.fills_later(st.n):
            return _empty(st.n)
        out = st.final_frames(self.done)
        self.done += len(out)
        return out


def _empty(n: int) -> np.ndarray:
    return np.zeros((0, n), dtype=np.int64)


class _Worker:
    """The decode thread's side of a :class:`TokenStream`. It holds no reference to the stream, so
    an abandoned stream is collected and its ``__del__`` stops this thread."""

    def __init__(self, pipe, tokenizer: str, prompt: Batch, config: DecodeConfig, chunk_frames: int,
                 buffer: int) -> None:
        self.pipe, self.tokenizer, self.prompt, self.config = pipe, tokenizer, prompt, config
        self.chunk_frames = chunk_frames
        self.queue: queue.Queue = queue.Queue(maxsize=buffer)
        self.cancel = threading.Event()
        self.steps = 0
        self.finished = False
        self.stopped: bool | None = None
        self.score: float | None = None
        self.cutter = FrameCutter()
        self.pending: list[np.ndarray] = []  # final frames not handed over yet (global ids)
        self.given: list[np.ndarray] = []  # frames handed over (checked against the final hypothesis)

    def put(self, item: Any) -> None:
        while True:  # wait for room, but give up when the reader closed the stream
            if self.cancel.is_set():
                raise _Closed
            try:
                self.queue.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def hand_over(self, frames: np.ndarray, force: bool = False) -> None:
        if len(frames):
            self.pending.append(frames)
        have = sum(len(f) for f in self.pending)
        if have and (force or have >= self.chunk_frames):
            block = np.concatenate(self.pending)
            self.pending = []
            self.given.append(block)
            self.put(self.pipe.to_local(self.tokenizer, block))

    def on_step(self, active: list[int], states: list[RowState]) -> None:
        self.steps += 1
        if self.cancel.is_set():
            raise _Closed
        self.hand_over(self.cutter.new_frames(states[0]))

    def run(self) -> None:
        from speechlm.infer.generate import sample_decode

        try:
            with torch.inference_mode():
                hyp = sample_decode(self.pipe.model, self.prompt, self.config, on_step=self.on_step,
                                    ordinal_fields=self.pipe.ordinal_fields())[0][0]
            self.finished = True
            self.stopped, self.score = hyp.stopped, float(hyp.score)
            n = self.pipe.vocab.n_streams(self.tokenizer)
            final = hyp.segments[0].frames if hyp.segments else _empty(n)
            given = np.concatenate(self.given + self.pending) if self.given or self.pending else _empty(n)
            if not np.array_equal(final[: len(given)], given):  # a bug in FrameCutter, never the model
                raise RuntimeError(f"stream: frames handed out before the end differ from the final hypothesis "
                                   f"(strategy {self.pipe.model.config.strategy!r})")
            rest = final[len(given):]
            for a in range(0, len(rest), self.chunk_frames):  # ar_nar: every frame arrives here
                self.hand_over(rest[a: a + self.chunk_frames], force=True)
            self.hand_over(_empty(n), force=True)
            self.put(_END)
        except _Closed:
            log.debug("stream closed by its reader after %d decoding steps", self.steps)
            self.wake_reader()
        except BaseException as e:  # noqa: BLE001  (handed to the reader, who raises it)
            self.finished = True
            try:
                self.put(e)
            except _Closed:
                self.wake_reader()

    def wake_reader(self) -> None:
        """After a close: leave the end mark in the queue, so a reader blocked in another thread
        (a server's iterating thread while its event loop closed the stream) wakes up."""
        while True:
            try:
                self.queue.put_nowait(_END)
                return
            except queue.Full:
                try:
                    self.queue.get_nowait()
                except queue.Empty:
                    pass


class TokenStream:
    """Local tokens ``[frames, streams]`` (int32) of one input's first target, a block of at least
    ``chunk_frames`` frames at a time as they become final (the last block may be shorter).

    Iterate it (or use it as a context manager); ``close()`` stops the decoding (a server whose
    client went away frees the model; dropping the stream does it too). After the last block:
    ``stopped`` (the model's end token ended the target, not a length limit) and ``score``.
    ``steps`` counts the decoding steps taken so far, ``finished`` says the decoder has ended.
    """

    def __init__(self, pipe, task: str, prompt: Batch, config: DecodeConfig, chunk_frames: int = 8,
                 buffer: int = 2) -> None:
        self.pipe, self.task = pipe, task
        self.tokenizer = pipe.template(task).targets[0].tokenizer
        self._worker = _Worker(pipe, self.tokenizer, prompt, config, chunk_frames, buffer)
        self._thread: threading.Thread | None = None
        self._exhausted = False

    steps = property(lambda self: self._worker.steps)
    finished = property(lambda self: self._worker.finished)
    stopped = property(lambda self: self._worker.stopped)
    score = property(lambda self: self._worker.score)

    @property
    def closed(self) -> bool:
        return self._worker.cancel.is_set()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> np.ndarray:
        if self._exhausted or self.closed:
            raise StopIteration
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker.run, name=f"speechlm-stream-{self.task}", daemon=True)
            self._thread.start()
        item = self._worker.queue.get()
        if item is _END:
            self._exhausted = True
            self._thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self._exhausted = True
            raise item
        return item

    def close(self, wait: bool = True) -> None:
        """Stop decoding: the decode thread ends at its next step (``wait``: wait for that)."""
        self._worker.cancel.set()
        self._exhausted = True
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # an abandoned stream must not keep its decode thread waiting
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.cancel.set()


class ContextDecoder:
    """Stream decoder for audio tokenizers without one of their own: decodes the new frames with
    ``context`` frames of left context and holds the last ``lookahead`` frames back until more
    arrive (or ``flush``), keeping only the samples of frames it has both sides of. Exact for codecs
    whose output at a frame depends on at most that many frames around it (Codec 2 through its
    plain ``decode``: 1 frame of lag; neural codecs: use enough context)."""

    def __init__(self, tok: AudioTokenizer, context: int = 8, lookahead: int = 2) -> None:
        self.tok, self.context, self.lookahead = tok, context, lookahead
        self.frames = np.zeros((0, tok.n_streams), dtype=np.int64)  # from frame `base` on
        self.base = 0
        self.out = 0  # frames whose samples were returned

    def _decode(self, final: bool) -> np.ndarray:
        end = self.base + len(self.frames)
        stop = end if final else end - self.lookahead
        if stop <= self.out:
            return np.zeros(0, dtype=np.float32)
        lo = max(self.base, self.out - self.context)
        y = np.asarray(self.tok.decode(self.frames[lo - self.base:]), dtype=np.float32).reshape(-1)
        per = len(y) / (end - lo)  # samples per frame
        piece = y[round(per * (self.out - lo)): round(per * (stop - lo))]
        self.out = stop
        keep = max(0, self.out - self.context) - self.base  # frames no later decode needs
        self.frames, self.base = self.frames[keep:], self.base + keep
        return piece

    def push(self, tokens: np.ndarray) -> np.ndarray:
        """New frames ``[frames, streams]`` -> the samples now final (may be empty)."""
        tokens = np.asarray(tokens)
        if len(tokens):
            self.frames = np.concatenate([self.frames, tokens.astype(np.int64)])
        return self._decode(final=False)

    def flush(self) -> np.ndarray:
        """The samples of the frames held back, once all frames are in."""
        return self._decode(final=True)


class _OverTokens:
    """A stream read from a :class:`TokenStream` (``self.tokens``): closing it closes that."""

    tokens: TokenStream

    def close(self, wait: bool = True) -> None:
        """Stop decoding (see :meth:`TokenStream.close`)."""
        self.tokens.close(wait)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AudioStream(_OverTokens):
    """Float32 mono audio chunks at :attr:`sample_rate` of one input's first (audio) target, as its
    frames become final (about ``chunk_frames`` frames each; the first one of Codec 2 is 20 ms
    shorter and its last 20 ms come as a chunk of their own). ``close()`` stops the decoding;
    ``tokens`` is the :class:`TokenStream` (steps, stopped, score)."""

    def __init__(self, tokens: TokenStream, decoder=None) -> None:
        self.tokens = tokens
        tok = tokens.pipe.tokenizers[tokens.tokenizer]
        self.sample_rate: int = int(tok.sample_rate)
        self.decoder = decoder if decoder is not None else (
            tok.stream_decoder() if hasattr(tok, "stream_decoder") else ContextDecoder(tok))
        self._flushed = False

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        while True:
            try:
                block = next(self.tokens)
            except StopIteration:
                if self._flushed or self.tokens.closed:
                    raise
                self._flushed = True
                tail = self.decoder.flush()
                if len(tail):
                    return tail
                raise
            y = self.decoder.push(block)
            if len(y):
                return y



class TextStream(_OverTokens):
    """Text pieces of one input's first (text) target as its tokens are decoded: whole words (a
    word is held back until the next one starts), the rest at the end; ``"".join`` of the pieces
    is the whole text. ``close()`` stops the decoding."""

    def __init__(self, tokens: TokenStream) -> None:
        self.tokens = tokens
        self.detok = tokens.pipe.tokenizers[tokens.tokenizer]
        self._local: list[np.ndarray] = []
        self._emitted = ""
        self._done = False

    def __iter__(self) -> Iterator[str]:
        return self

    def _text(self) -> str:
        return str(self.detok.decode(np.concatenate(self._local))) if self._local else ""

    def __next__(self) -> str:
        while not self._done:
            try:
                self._local.append(next(self.tokens))
            except StopIteration:
                self._done = True
                if self.tokens.closed:
                    raise
                text = self._text()
                if not text.startswith(self._emitted):  # a detokenizer that rewrote a whole word
                    log.warning("stream: the final text %r does not continue the streamed %r", text, self._emitted)
                    return ""
                rest = text[len(self._emitted):]
                self._emitted = text
                if rest:
                    return rest
                raise
            text = self._text()
            if not text.startswith(self._emitted):
                continue  # still settling: wait for more tokens
            cut = max(text.rfind(" "), text.rfind("\n"), text.rfind("\t"))
            bad = text.find("\ufffd", len(self._emitted))  # an unfinished multi-byte character
            if bad >= 0:
                cut = min(cut, bad)
            if cut > len(self._emitted):
                piece, self._emitted = text[len(self._emitted): cut], text[:cut]
                return piece
        raise StopIteration



def stream_config(pipe, task: str, config: DecodeConfig | None) -> DecodeConfig:
    """The decoding options of ``task`` (``config`` or the model dir's), checked for streaming."""
    config = (config or pipe.decode_config(task)).validate()
    if config.search not in STREAM_SEARCHES:
        raise StreamError(f"task {task!r}: search {config.search!r} cannot stream (only "
                          f"{' and '.join(STREAM_SEARCHES)} decode left to right one hypothesis at a time); "
                          f"use search: greedy or sample, or Pipeline.generate for the whole output")
    if config.nbest != 1:  # as Pipeline.generate does: the one output it returns is a 1-best decode
        config = dataclasses.replace(config, nbest=1)
    return config


def stream_tokens(pipe, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None,
                  chunk_frames: int = 8, buffer: int = 2) -> TokenStream:
    """A :class:`TokenStream` of ``task`` on one set of inputs (segment name -> value). Inputs and
    options are checked here (errors raise now, not at the first ``next``); decoding starts at the
    first ``next``."""
    if chunk_frames < 1:
        raise StreamError(f"chunk_frames must be >= 1, got {chunk_frames}")
    config = stream_config(pipe, task, config)
    template = pipe.template(task)
    example = pipe.prompt_example(template, pipe.condition_tokens(template, inputs), "input")
    prompt = collate([example], pipe.vocab.pad_id).to(pipe.device)
    return TokenStream(pipe, task, prompt, config, chunk_frames, buffer)


def target_kind(pipe, task: str) -> tuple[str, bool]:
    """(first target's tokenizer, whether it is audio)."""
    name = pipe.template(task).targets[0].tokenizer
    return name, isinstance(pipe.tokenizers[name], AudioTokenizer)


def stream_audio(pipe, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None,
                 chunk_frames: int = 8) -> AudioStream:
    """An :class:`AudioStream` of an audio-target task (``ar_nar`` models: every chunk at the end)."""
    name, audio = target_kind(pipe, task)
    if not audio:
        raise StreamError(f"task {task!r} writes {name!r} text, not audio; stream it with generate_stream")
    if pipe.model.pattern.fills_later(pipe.vocab.n_streams(name)):
        log.info("stream: the %s strategy fills streams of %s after decoding: all chunks come at the end",
                 pipe.model.pattern.name, name)
    return AudioStream(stream_tokens(pipe, task, inputs, config, chunk_frames))


def stream_text(pipe, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None) -> TextStream:
    """A :class:`TextStream` of a text-target task."""
    name, audio = target_kind(pipe, task)
    if audio:
        raise StreamError(f"task {task!r} writes {name!r} audio, not text; stream it with tts_stream "
                          f"(or speechlm.infer.stream.stream_audio for any audio task)")
    return TextStream(stream_tokens(pipe, task, inputs, config, chunk_frames=1))


__all__ = ["AudioStream", "ContextDecoder", "FrameCutter", "StreamError", "TextStream", "TokenStream", "stream_audio",
           "stream_config", "stream_text", "stream_tokens"]

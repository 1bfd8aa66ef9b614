"""Concurrent requests share batches: a worker thread decodes the requests of one (task, decode
config) that arrive close together as one batch of the batched decoder.

A request goes through three places:

1. ``submit*`` checks the task and the decode config in the caller's thread (a bad one fails at
   once) and hands the inputs to a small encoder pool, so reading and tokenizing audio neither
   blocks an event loop nor the decoding of the running batch;
2. the encoded prompt waits in the queue; the worker takes the oldest request's group (same
   task and config) once the group is full (``max_batch``) or the oldest has waited
   ``window_s``; requests that arrive while a batch decodes have waited already, so they form
   the next batch the moment the running one ends;
3. the worker decodes the group (rows of different lengths decode together, finished rows leave
   the batch), detokenizes each request's hypotheses and resolves its future; with greedy or
   sampling search a request is answered at the step its rows end (:class:`StepWatch`), not
   when the batch's longest row ends.

A request whose input cannot be decoded (unreadable audio, no tokens, too long for the model's
context, a missing input) fails alone with a :class:`RequestError`; if a whole batch fails, its
requests are decoded one by one so that only the culprit fails. A cancelled request (its
future or ``asyncio`` task cancelled, a client that went away) is dropped before its batch
forms, or leaves a running greedy/sampling batch at the next step. New requests do not join a
running batch: they form the next one (joining would merge KV caches mid-decoding). Greedy
and beam search give each request what decoding it alone gives; sampling draws the rows of a
batch from one generator (seeded by the config), so a sample depends on its batch mates.

Example:
    >>> pipe = speechlm.load("exp/agent/packed")                          # doctest: +SKIP
    >>> with BatchScheduler(pipe, max_batch=16, window_s=0.01) as sched:  # doctest: +SKIP
    ...     texts = sched.submit_sync("asr", {"speech": "hello.wav"})    # n-best texts, best first
    ...     texts = await sched.submit("asr", {"speech": (wav, 16000)})   # from a coroutine
    ...     sched.stats()["mean_batch"]
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from speechlm.config import ConfigError
from speechlm.data.audio import AudioError
from speechlm.infer.config import DecodeConfig
from speechlm.infer.pipeline import InputError
from speechlm.tokenizers import AudioTokenizer

log = logging.getLogger(__name__)

# what makes one request's input undecodable (the client's fault, a 4xx), as the decode command has it
INPUT_ERRORS = (InputError, AudioError, ConfigError, ValueError, KeyError, OSError)


class RequestError(ValueError):
    """A request cannot be decoded: unknown task, bad decode config or an input that gives no
    prompt; the message names the request and what would fix it (a server answers 4xx)."""


class SchedulerClosed(RuntimeError):
    """The scheduler was closed before this request was decoded."""


class QueueFull(RuntimeError):
    """More than ``max_queue`` requests are waiting; the caller should retry later (a 503)."""


@dataclass(eq=False)
class Request:
    """One submitted request while it waits and decodes."""

    id: str
    task: str
    inputs: dict[str, Any]
    config: DecodeConfig
    key: tuple  # (task, decode config values): requests of one key share batches
    future: concurrent.futures.Future
    submitted: float = field(default_factory=time.monotonic)
    queued: float = 0.0  # when its prompt was ready
    example: Any = None  # the decoding prompt (speechlm.data.sequence.Example)
    follower: Any = None  # a decoding rule of its own (speechlm.infer.follow), greedy and sampling searches


class BatchScheduler:
    """Decodes concurrent requests of a :class:`~speechlm.infer.pipeline.Pipeline` in shared batches.

    ``max_batch``: requests per batch (1 = one at a time, the baseline); ``window_s``: how long
    the oldest waiting request waits for batch mates; ``max_queue``: waiting requests beyond
    this are refused (:class:`QueueFull`); ``encode_threads``: threads that read and tokenize
    inputs beside the decoding worker.
    """

    def __init__(self, pipe, max_batch: int = 16, window_s: float = 0.01, max_queue: int = 1024,
                 encode_threads: int = 2) -> None:
        if max_batch < 1 or window_s < 0 or max_queue < 1 or encode_threads < 1:
            raise ValueError(f"BatchScheduler: max_batch ({max_batch}), max_queue ({max_queue}) and encode_threads "
                             f"({encode_threads}) must be >= 1 and window_s ({window_s}) >= 0")
        self.pipe, self.max_batch, self.window_s, self.max_queue = pipe, max_batch, window_s, max_queue
        self._cond = threading.Condition()
        self._queue: collections.deque[Request] = collections.deque()
        self._encoding: set[Request] = set()  # submitted, prompt not ready yet (they count toward max_queue)
        self._closed = False
        self._drain = True  # after close(): decode what was submitted (wait=True) or fail it
        self._ids = itertools.count()
        self._configs: dict[str, DecodeConfig] = {}
        self._stats = collections.Counter()
        self._sizes = collections.Counter()  # batch size -> number of batches
        self._pool_prefix = f"speechlm-encode-{id(self):x}"
        self._pool = concurrent.futures.ThreadPoolExecutor(encode_threads, thread_name_prefix=self._pool_prefix)
        self._worker = threading.Thread(target=self._run, name="speechlm-batch", daemon=True)
        self._worker.start()

    # ---- submitting ------------------------------------------------------------------------------
    def submit_future(self, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None,
                      request_id: str | None = None, follower=None) -> concurrent.futures.Future:
        """Queue one request; its future gives the n-best outputs (best first): texts for text
        targets, ``(wav, sample_rate)`` for audio targets. Cancel the future to drop the request.
        ``follower``: a rule its decoding follows (:mod:`speechlm.infer.follow`)."""
        rid = request_id or f"req{next(self._ids)}"
        config = self._config(task, config, rid)
        if not isinstance(inputs, dict):
            raise RequestError(f"{rid}: inputs must be a dict of segment name -> value, got {type(inputs).__name__}")
        if follower is not None and config.search not in ("greedy", "sample"):
            raise RequestError(f"{rid}: followed decoding needs search greedy or sample, not {config.search!r}")
        req = Request(rid, task, dict(inputs), config, (task, dataclasses.astuple(config)), concurrent.futures.Future(),
                      follower=follower)
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the scheduler is closed; no new requests are taken")
            if len(self._queue) + len(self._encoding) >= self.max_queue:
                self._stats["refused"] += 1
                raise QueueFull(f"{self.max_queue} requests are waiting already; retry later")
            self._encoding.add(req)
            self._stats["submitted"] += 1
            # under the lock: close() shuts the pool down only after it has set _closed
            self._pool.submit(self._encode, req)
        return req.future

    def submit_sync(self, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None,
                    timeout: float | None = None, follower=None) -> list[Any]:
        """:meth:`submit_future` and wait (from a thread); a timeout cancels the request."""
        fut = self.submit_future(task, inputs, config, follower=follower)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise

    async def submit(self, task: str, inputs: dict[str, Any], config: DecodeConfig | None = None) -> list[Any]:
        """:meth:`submit_future` from a coroutine; cancelling the awaiting task drops the request.
        (The future is resolved on the event loop's thread: ``asyncio.wrap_future`` hands the
        worker's result over with ``loop.call_soon_threadsafe``.)"""
        fut = self.submit_future(task, inputs, config)
        try:
            return await asyncio.wrap_future(fut)
        except asyncio.CancelledError:
            fut.cancel()
            raise

    def _config(self, task: str, config: DecodeConfig | None, rid: str) -> DecodeConfig:
        """A private copy of the request's config (the caller may change its own afterwards)."""
        try:
            self.pipe.template(task)
            if config is None:
                if task not in self._configs:
                    self._configs[task] = self.pipe.decode_config(task)
                config = self._configs[task]
            elif not isinstance(config, DecodeConfig):
                raise ConfigError(f"config must be a DecodeConfig, got {type(config).__name__}")
            return dataclasses.replace(config).validate(f"{rid}: decode config")
        except (KeyError, ConfigError) as e:
            raise RequestError(f"{rid}: {e.args[0] if e.args else e}") from e

    # ---- encoding (pool threads) --------------------------------------------------------------------
    def _encode(self, req: Request) -> None:
        error: BaseException | None = None
        try:
            if not req.future.cancelled():
                template = self.pipe.template(req.task)
                toks = self.pipe.condition_tokens(template, req.inputs, req.id)
                req.example = self.pipe.prompt_example(template, toks, req.id)
                req.inputs = {}  # the raw audio is not needed any more: free it while the request waits
        except INPUT_ERRORS as e:
            error = RequestError(f"{req.id}: {e}")
            error.__cause__ = e
        except Exception as e:  # a server error of this request only
            log.exception("%s: encoding failed", req.id)
            error = e
        # leaving the encoding set and joining the queue in one step: a closing worker waits for both
        with self._cond:
            self._encoding.discard(req)
            if error is None and self._closed and not self._drain:
                error = SchedulerClosed(f"{req.id}: the scheduler was closed before it was decoded")
            if error is None:
                req.queued = time.monotonic()
                self._queue.append(req)  # a cancelled one is dropped (and counted) by the worker
                self._cond.notify()
        if error is not None:
            self._fail(req, error)

    # ---- the worker ---------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._decode(batch)
            except Exception as e:  # never let the worker die: fail what is left
                log.exception("batch decoding failed")
                for r in batch:
                    self._fail(r, e)

    def _next_batch(self) -> list[Request] | None:
        """The next group to decode (None once closed and drained): the oldest request's group, when
        it is full or the oldest has waited ``window_s``."""
        with self._cond:
            while True:
                if self._closed and not self._drain:
                    return None  # close() fails what is queued
                for r in [r for r in self._queue if r.future.cancelled()]:
                    self._queue.remove(r)
                    self._stats["cancelled"] += 1
                if not self._queue:
                    if self._closed and not self._encoding:
                        return None
                    self._cond.wait()
                    continue
                first = self._queue[0]
                group = [r for r in self._queue if r.key == first.key][: self.max_batch]
                wait = first.queued + self.window_s - time.monotonic()
                if len(group) >= self.max_batch or wait <= 0 or self._closed:
                    for r in group:
                        self._queue.remove(r)
                    return group
                self._cond.wait(wait)

    def _decode(self, batch: list[Request], retry: bool = False) -> None:
        t0 = time.monotonic()
        if not retry:  # counted as it starts: its requests may be answered before it ends
            with self._cond:
                self._stats["batches"] += 1
                self._stats["batched_requests"] += len(batch)
                self._sizes[len(batch)] += 1
        try:
            outs = self._generate(batch)
        except Exception as e:
            if len(batch) == 1:
                r = batch[0]
                if isinstance(e, INPUT_ERRORS):
                    self._fail(r, RequestError(f"{r.id}: {e}"), e)
                else:
                    log.exception("%s: decoding failed", r.id)
                    self._fail(r, e)
                return
            log.warning("a batch of %d failed (%s); decoding its requests one by one", len(batch), e)
            for r in batch:
                if not r.future.done():  # not answered early, not cancelled
                    self._decode([r], retry=True)
            return
        with self._cond:
            self._stats["decode_ms"] += int(1000 * (time.monotonic() - t0))
        for r, hyps in zip(batch, outs):
            if hyps is not None:
                self._answer(r, hyps)

    def _answer(self, req: Request, hyps: list) -> None:
        """Detokenize a request's hypotheses (local tokens) and resolve its future."""
        try:
            value = [self._detokenize(req.task, h) for h in hyps]
        except Exception as e:  # a codec that cannot decode these tokens
            log.exception("%s: detokenizing failed", req.id)
            self._fail(req, e)
            return
        self._resolve(req, value)

    def _generate(self, batch: list[Request]) -> list[list[Any] | None]:
        """Hypotheses (local target tokens) of each request, decoded as one batch; None for a
        request already answered or dropped while the batch decoded (:class:`StepWatch`)."""
        from speechlm.data.batch import collate
        from speechlm.infer.generate import generate_nbest, sample_decode

        pipe = self.pipe
        config = batch[0].config
        target = pipe.template(batch[0].task).targets[0]
        S, pad = pipe.model.n_streams, pipe.vocab.pad_id
        prompts = collate([r.example for r in batch], pad).to(pipe.device)
        watch = None
        with torch.inference_mode():
            if config.search in ("greedy", "sample"):
                watch = StepWatch(self, batch, config.nbest, target.tokenizer,
                                  early=not pipe.model.pattern.fills_later(pipe.vocab.n_streams(target.tokenizer)))
                followers = [r.follower for r in batch] if any(r.follower is not None for r in batch) else None
                hyps = sample_decode(pipe.model, prompts, config, on_step=watch, ordinal_fields=pipe.ordinal_fields(),
                                     followers=followers)
                self._count("steps", watch.steps)
            else:  # beam and CTC searches: no step hook
                hyps = generate_nbest(pipe.model, prompts, config)
        return [None if watch is not None and j in watch.handled else
                [pipe.to_local(target.tokenizer, h.frames(S, pad)) for h in hs] for j, hs in enumerate(hyps)]

    def _detokenize(self, task: str, tokens) -> Any:
        """Text, or ``(wav, sample_rate)`` for an audio target (as ``Pipeline.generate`` gives)."""
        name = self.pipe.template(task).targets[0].tokenizer
        value = self.pipe.detokenize(name, tokens)
        tok = self.pipe.tokenizers[name]
        return (value, tok.sample_rate) if isinstance(tok, AudioTokenizer) else str(value)

    # ---- futures -----------------------------------------------------------------------------------
    def _resolve(self, req: Request, value: list[Any]) -> None:
        try:
            req.future.set_result(value)
        except concurrent.futures.InvalidStateError:  # cancelled while it decoded
            self._count("cancelled")
            return
        with self._cond:
            self._stats["completed"] += 1
            self._stats["latency_ms"] += int(1000 * (time.monotonic() - req.submitted))

    def _fail(self, req: Request, error: BaseException, cause: BaseException | None = None) -> None:
        if cause is not None:
            error.__cause__ = cause
        try:
            req.future.set_exception(error)
        except concurrent.futures.InvalidStateError:
            self._count("cancelled")
            return
        self._count("failed")

    def _count(self, what: str, n: int = 1) -> None:
        with self._cond:
            self._stats[what] += n

    # ---- the rest ----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Counters: submitted, completed, failed, cancelled (of which cancelled_decoding: dropped
        from a running batch), refused, batches, mean_batch (requests per decoded batch),
        max_batch_seen, batch_sizes ({size: batches}), queued (waiting now), mean_latency_ms
        (submit -> result of completed requests), decode_ms (total), steps (decoding steps of
        greedy/sampling batches)."""
        with self._cond:
            s = self._stats
            return {
                "submitted": s["submitted"], "completed": s["completed"], "failed": s["failed"],
                "cancelled": s["cancelled"], "cancelled_decoding": s["cancelled_decoding"], "refused": s["refused"],
                "batches": s["batches"], "steps": s["steps"],
                "mean_batch": s["batched_requests"] / s["batches"] if s["batches"] else 0.0,
                "max_batch_seen": max(self._sizes, default=0), "batch_sizes": dict(sorted(self._sizes.items())),
                "queued": len(self._queue) + len(self._encoding), "decode_ms": s["decode_ms"],
                "mean_latency_ms": s["latency_ms"] / s["completed"] if s["completed"] else 0.0,
                "max_batch": self.max_batch, "window_ms": 1000 * self.window_s,
            }

    def close(self, wait: bool = True) -> None:
        """Stop taking requests; ``wait``: decode those already submitted first, else fail them
        with :class:`SchedulerClosed`."""
        with self._cond:
            if self._closed:
                return
            self._closed, self._drain = True, wait
            self._cond.notify_all()
        # an encoder thread (a failed request's callback) cannot wait for its own pool
        in_pool = threading.current_thread().name.startswith(self._pool_prefix)
        self._pool.shutdown(wait=not in_pool, cancel_futures=not wait)
        with self._cond:
            never = list(self._encoding)  # encode jobs the pool dropped (wait=False) never ran
            self._encoding.clear()
            dropped = [] if wait else list(self._queue)
            if not wait:
                self._queue.clear()
            self._cond.notify_all()
        for r in never + dropped:
            self._fail(r, SchedulerClosed(f"{r.id}: the scheduler was closed before it was decoded"))
        if threading.current_thread() is not self._worker:  # a future's callback may close it
            self._worker.join()

    def __enter__(self) -> BatchScheduler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class StepWatch:
    """The ``on_step`` hook of a batch's decoding: answers a request as soon as all its rows have
    ended (a short request does not wait for the longest of its batch), and ends the rows of a
    request cancelled mid-decoding (they leave the batch at this step, freeing its compute).

    Ending a row sets its ``RowState.done``, the flag ``sample_decode`` reads right after the hook
    to drop finished rows; the row's hypothesis is thrown away with its request. A strategy that
    fills streams after the last step (``Pattern.fills_later``: ar_nar audio) gets ``early=False``
    (answers wait for the end)."""

    def __init__(self, sched: BatchScheduler, batch: list[Request], nbest: int, tokenizer: str, early: bool) -> None:
        self.sched, self.batch, self.nbest, self.tokenizer, self.early = sched, batch, nbest, tokenizer, early
        self.handled: set[int] = set()  # requests answered or dropped
        self.steps = 0

    def __call__(self, active: list[int], states: list) -> None:
        self.steps += 1
        pipe, n = self.sched.pipe, self.nbest
        S, pad = pipe.model.n_streams, pipe.vocab.pad_id
        for j, req in enumerate(self.batch):
            if j in self.handled:
                continue
            rows = states[j * n: (j + 1) * n]
            if req.future.cancelled():
                for st in rows:
                    st.done = True
                self.handled.add(j)
                self.sched._count("cancelled")
                self.sched._count("cancelled_decoding")
            elif self.early and all(st.done for st in rows):
                self.handled.add(j)
                self.sched._answer(req, [pipe.to_local(self.tokenizer, st.hyp.frames(S, pad)) for st in rows])


__all__ = ["BatchScheduler", "QueueFull", "RequestError", "SchedulerClosed", "StepWatch"]

"""The voice agent behind ``/v1/chat/completions`` and the realtime WebSocket: one environment
and dialogue per session, one user turn per call of :func:`run_agent_turn`.

A turn reuses :mod:`speechlm.agent.loop` as ``speechlm agent chat`` does (the session's
:class:`~speechlm.agent.loop.EpisodeRun` grows by one user turn; :meth:`AgentLoop.step` decodes
and applies assistant steps until an answer, ``max_turns`` steps or a second invalid turn), with
one change: the loop's decoders submit their prompts to the server's scheduler, so the steps of
concurrent sessions are decoded in shared batches.

The user's turn is speech (``e2e`` and ``cascade`` modes; typed text is spoken with espeak-ng for
``e2e``) or text (``cascade`` takes it as the transcript, ``text`` mode needs it).

Example (what the endpoints and H4's WebSocket do)::

    >>> turn = run_agent_turn(app.state.speechlm, "s1", audio=wav_bytes)   # doctest: +SKIP
    >>> turn["calls"][0]["name"], turn["answer"]                         # doctest: +SKIP
    ('lights', 'the kitchen lights are off')
"""
from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Union

import numpy as np

from speechlm.agent.loop import AgentLoop, Decoder, EpisodeRun, LoopConfig, spoken_form
from speechlm.serve.openai_format import APIError

log = logging.getLogger(__name__)

SESSION_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
AudioInput = Union[bytes, tuple]  # uploaded file bytes, or (mono float32 waveform, sample rate)
EventSink = Callable[[dict], None]


class ScheduledDecoder(Decoder):
    """A loop :class:`~speechlm.agent.loop.Decoder` whose prompts go through the scheduler
    (``submit_sync(task, condition_tokens, config, follower=...) -> n-best texts``) instead of decoding alone."""

    def __init__(self, base: Decoder, submit_sync: Callable[..., list[str]]) -> None:
        self.__dict__.update(base.__dict__)  # task, template, tokenizer, config of the base decoder
        self._submit = submit_sync

    def __call__(self, inputs: list[dict[str, np.ndarray]], ids: list[str], config=None,
                 followers=None) -> list[list[str]]:
        return [list(self._submit(self.task, inp, config or self.config, follower=f))
                for inp, f in zip(inputs, followers or [None] * len(inputs))]


@dataclass
class AgentSession:
    """One client's dialogue and environment; ``lock`` keeps its turns in order."""

    id: str
    run: EpisodeRun | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    turns: int = 0


class SessionStore:
    """Sessions by id, at most ``max_sessions`` (the least recently used idle one goes first) and
    dropped after ``ttl_s`` seconds idle."""

    def __init__(self, max_sessions: int = 256, ttl_s: float = 3600.0) -> None:
        self.max_sessions, self.ttl_s = max_sessions, ttl_s
        self._sessions: dict[str, AgentSession] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, sid: str) -> AgentSession | None:
        with self._lock:
            return self._sessions.get(sid)

    def get_or_create(self, sid: str) -> AgentSession:
        now = time.monotonic()
        with self._lock:
            for k in [k for k, s in self._sessions.items() if now - s.last_used > self.ttl_s and not s.lock.locked()]:
                del self._sessions[k]
            s = self._sessions.get(sid)
            if s is None:
                if len(self._sessions) >= self.max_sessions:
                    idle = [x for x in self._sessions.values() if not x.lock.locked()]
                    if not idle:
                        raise APIError(503, f"all {self.max_sessions} agent sessions are busy; retry later")
                    del self._sessions[min(idle, key=lambda x: x.last_used).id]
                s = self._sessions[sid] = AgentSession(sid)
            s.last_used = now
            return s

    def drop(self, sid: str) -> bool:
        with self._lock:
            return self._sessions.pop(sid, None) is not None

    def state_of(self, sid: str) -> dict:
        """The environment state of session ``sid``; KeyError when it has none yet."""
        s = self.get(sid)
        if s is None or s.run is None:
            raise KeyError(sid)
        return s.run.env.snapshot()

    def describe(self, sid: str) -> dict:
        """``GET /v1/sessions/{id}``: turns so far, the dialogue (as the model reads it) and the state."""
        s = self.get(sid)
        if s is None:
            raise APIError(404, f"no session {sid!r} (it never existed, or it expired or was deleted)")
        run = s.run
        history = [] if run is None else [{"role": t["role"], "text": t["text"]} for t in run.history
                                          if not t.get("hidden") and t["text"]]
        return {"id": s.id, "object": "speechlm.session", "created": int(s.created), "turns": s.turns,
                "history": history, "state": None if run is None else run.env.snapshot()}


def check_session_id(sid: str | None) -> str:
    """A client's session id (letters, digits, ``_.:-``, up to 128), or a new one when None."""
    if sid is None or sid == "":
        return "s-" + uuid.uuid4().hex[:16]
    if not SESSION_RE.fullmatch(sid):
        raise APIError(400, f"session id {sid[:40]!r}: use 1-128 letters, digits or _.:- characters", "X-Session-Id")
    return sid


class AgentService:
    """The agent loop of a served model: its mode, decoders on the scheduler, and the sessions."""

    def __init__(self, pipe, submit_sync: Callable[..., list[str]], config: LoopConfig,
                 sessions: SessionStore, max_audio_s: float = 60.0, max_history: int = 40,
                 session_wait_s: float = 120.0) -> None:
        self.pipe, self.cfg, self.sessions = pipe, config.validate(), sessions
        self.max_audio_s, self.max_history, self.session_wait_s = max_audio_s, max_history, session_wait_s
        self.loop = AgentLoop(pipe, config)
        self.loop.decoder = ScheduledDecoder(self.loop.decoder, submit_sync)
        if self.loop.asr is not None:
            self.loop.asr = ScheduledDecoder(self.loop.asr, submit_sync)
        self._whisper_lock = threading.Lock()

    @property
    def task(self) -> str:
        return self.loop.decoder.task

    # -- the user's turn -> model input
    def _waveform(self, audio: AudioInput) -> tuple[np.ndarray, int]:
        from speechlm.serve.audio_io import decode_audio

        if isinstance(audio, (bytes, bytearray)):
            return decode_audio(bytes(audio), self.max_audio_s, "input_audio")
        wav, sr = audio
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if len(wav) == 0:
            raise APIError(400, "input_audio: the audio has no samples", "input_audio")
        if len(wav) / sr > self.max_audio_s:
            raise APIError(413, f"input_audio: {len(wav) / sr:.1f} s of audio; at most {self.max_audio_s:g} s")
        return wav, int(sr)

    def _transcribe(self, sid: str, wav: np.ndarray, sr: int) -> str:
        """The cascades' transcript of one turn's speech (the model's ASR through the scheduler, or Whisper)."""
        if self.loop.whisper is not None:
            from speechlm.data.audio import resample

            with self._whisper_lock:  # one CTranslate2 model: one call at a time
                return spoken_form(self.loop.whisper.transcribe(resample(wav, sr, 16000)))
        seg = self.loop.asr.template.conditions[0]
        toks = self.loop.asr.encode({seg.name: (wav, sr)}, sid)
        return spoken_form(self.loop.asr([toks], [sid])[0][0])

    def _begin(self, sess: AgentSession, audio: AudioInput | None, text: str | None) -> tuple[EpisodeRun, str | None]:
        """Append the user's turn to the session's run; returns the run and the transcript known
        before decoding (cascades, text mode)."""
        from speechlm.agent.episodes import Episode
        from speechlm.serve.audio_io import speak_words

        mode = self.cfg.mode
        if audio is None and (text is None or not text.strip()):
            raise APIError(400, "the user turn is empty: send input_audio or text")
        if mode == "text" and audio is not None:
            raise APIError(400, "this server runs the agent in text mode (--agent-mode text): send text, not audio")
        transcript, tokens, seconds = None, None, 0.0
        if mode == "e2e":
            wav, sr = self._waveform(audio) if audio is not None else speak_words(text)
            seconds = len(wav) / sr
            seg = next(s for s in self.loop.decoder.template.conditions if s.is_audio)
            tokens = self.pipe.encode_value(seg.tokenizer, (wav, sr), sess.id)
        elif audio is not None:
            wav, sr = self._waveform(audio)
            seconds = len(wav) / sr
            transcript = self._transcribe(sess.id, wav, sr)
        else:
            transcript = spoken_form(text)
        turn = {"text": text or "", "audio": None}  # the audio is handed over as tokens (run.cache)
        run = sess.run
        if run is None or run.request_done:  # a new request: a new dialogue in the session's home as it is
            run = sess.run = self.loop.start(Episode(id=sess.id, turns=[turn],
                                                     initial_state=None if run is None else run.env.state))
        else:
            self._trim(run)
            run.ep.turns.append(turn)
            run.user, run.ended, run.error = len(run.ep.turns) - 1, None, None
            self.loop.begin_user_turn(run)
        run.cache = {run.user: tokens} if tokens is not None else {}
        run.audio_seconds += seconds
        if transcript is not None:
            run.set_transcript(transcript)
        return run, transcript

    def _trim(self, run: EpisodeRun) -> None:
        """Keep the history within ``max_history`` entries, cut at a user turn, so a long session's
        prompt stays inside the model's context (the environment keeps everything)."""
        if len(run.history) <= self.max_history:
            return
        starts = [i for i, t in enumerate(run.history) if t["role"] == "user" and i >= len(run.history) - self.max_history]
        cut = starts[0] if starts else len(run.history)
        del run.history[:cut]
        for records in (run.steps, run.calls, run.invalid):  # bounded memory for a long session
            del records[: max(0, len(records) - self.max_history)]

    # -- one turn
    def turn(self, sid: str, audio: AudioInput | None = None, text: str | None = None,
             on_event: EventSink | None = None, cancel: threading.Event | None = None) -> dict:
        """Run one user turn of session ``sid`` (see :func:`run_agent_turn`)."""
        from speechlm.agent.env import Environment

        sess = self.sessions.get_or_create(check_session_id(sid))
        if not sess.lock.acquire(timeout=self.session_wait_s):
            raise APIError(409, f"session {sess.id}: another turn is still running; wait for it")
        try:
            emit = on_event or (lambda ev: None)
            before = sess.run.env.snapshot() if sess.run is not None else None
            run, transcript = self._begin(sess, audio, text)
            if before is None:
                before = run.env.snapshot()
            n_calls, n_invalid, n_steps = len(run.calls), len(run.invalid), len(run.steps)
            if transcript is not None:
                emit({"type": "transcript", "text": transcript})
            wave = 0
            while not run.done:
                if cancel is not None and cancel.is_set():  # the client left: stop between steps
                    run.ended = "cancelled"
                    break
                self.loop.step([run], wave)
                wave += 1
                if transcript is None and self.loop.monologue and len(run.transcripts) > run.user:
                    transcript = run.transcripts[run.user]
                    emit({"type": "transcript", "text": transcript})
                for c in run.calls[n_calls:]:
                    if "id" not in c:
                        c["id"] = "call_" + uuid.uuid4().hex[:20]
                        emit({"type": "tool_call", "id": c["id"], "name": c["name"], "arguments": c["args"],
                              "ok": c["ok"], "result": c["result"]})
            answer = run.answer if run.ended == "answer" else None
            if answer is not None:
                emit({"type": "answer", "text": answer})
            state = run.env.snapshot()
            emit({"type": "state", "state": state})
            sess.turns += 1
            return {
                "session_id": sess.id, "transcript": transcript,
                "calls": [{"id": c["id"], "name": c["name"], "arguments": dict(c["args"]), "ok": c["ok"],
                           "result": c["result"]} for c in run.calls[n_calls:]],
                "answer": answer, "ended": run.ended, "error": run.error, "state": state,
                "changes": Environment.diff(before, state),
                "invalid": [{"text": b["text"], "error": b["error"], "retry": b["retry"]} for b in run.invalid[n_invalid:]],
                "steps": [s["text"] for s in run.steps[n_steps:]],
            }
        finally:
            sess.last_used = time.monotonic()
            sess.lock.release()


def run_agent_turn(state, session_id: str | None, request: AudioInput | str | None = None,
                   on_event: EventSink | None = None, cancel: threading.Event | None = None, *,
                   audio: AudioInput | None = None, text: str | None = None) -> dict:
    """One user turn of the voice agent on the server ``state`` (``app.state.speechlm``).

    ``request``: the user's speech as WAV/FLAC/OGG bytes or ``(mono float32 waveform,
    sample_rate)``, or typed text (a ``str``; spoken with espeak-ng for an e2e model); or give
    them by keyword, ``audio=`` or ``text=``.
    ``session_id``: the session to continue or start (None or "": a new one, returned).
    Blocking (decoding goes through the scheduler): call it from a worker thread
    (``state.agent_executor``). ``on_event`` gets, from that thread, the events
    ``{"type": "transcript", "text"}``, ``{"type": "tool_call", "id", "name", "arguments", "ok",
    "result"}`` (each as soon as the environment ran it), ``{"type": "answer", "text"}`` and
    ``{"type": "state", "state"}``. ``cancel`` set: stop after the current step (``ended: cancelled``).

    Returns ``{"session_id", "transcript" (None when the model does not say what it heard),
    "calls": [{"id", "name", "arguments", "ok", "result"}], "answer" (None without one), "ended"
    (answer | max_turns | invalid | input_error | cancelled), "error" (input_error's message),
    "state" (the environment after the turn), "changes" (readable state differences),
    "invalid" (turns that did not parse), "steps" (every decoded assistant turn)}``. Raises
    :class:`~speechlm.serve.openai_format.APIError` (4xx) for unusable input.
    """
    if state.agent is None:
        raise APIError(404, f"this model has no voice-agent task ({state.agent_error})")
    if request is not None:
        if audio is not None or text is not None:
            raise TypeError("run_agent_turn: give the user's turn once (request, audio= or text=)")
        audio, text = (None, request) if isinstance(request, str) else (request, None)
    return state.agent.turn(session_id or "", audio, text, on_event, cancel)


__all__ = [
    "AgentService",
    "AgentSession",
    "ScheduledDecoder",
    "SessionStore",
    "check_session_id",
    "run_agent_turn",
]

"""Live audio over a WebSocket (``/v1/realtime``) and the browser demo page (``GET /``).

Registered on the app by :func:`add_realtime_routes` (``create_app`` calls it).

Protocol of ``/v1/realtime`` (query: ``session_id`` to keep an environment across connections,
``api_key`` when the server has one, as browsers cannot set WebSocket headers):

Client -> server
    binary frames       16 kHz mono PCM16 little-endian, any length
    ``{"type": "config", "vad": bool, "silence_ms": int, "aggressiveness": 0-3, "speak": bool}``
                        (every field optional; ``vad: false`` buffers audio until ``commit``)
    ``{"type": "commit"}``  end the utterance now (e.g. after sending a dropped file)
    ``{"type": "clear"}``   drop the buffered audio
    ``{"type": "text", "text": "..."}``  a typed request instead of speech

Server -> client (JSON text frames)
    ``{"type": "ready", "session_id", "sample_rate": 16000, "state"}``  once, after connecting
    ``{"type": "speech_started"}`` / ``{"type": "speech_stopped", "duration", "request"}``  voice
                        activity; ``request: false`` = too little voice (a click), still listening
    ``{"type": "transcript", "text"}``   what the agent heard (monologue words or ASR)
    ``{"type": "tool_call", "id", "name", "arguments", "result", "ok"}``  one per call run
    ``{"type": "answer", "text"}``
    ``{"type": "state", "state", "changes"}``  the session's environment after the turn
    ``{"type": "audio", "data": base64 PCM16, "sample_rate"}``  the spoken answer, chunk by chunk
    ``{"type": "done"}``                 the turn is over (listening again)
    ``{"type": "error", "message"}``     a bad message or a failed turn; the connection stays open

One utterance is answered at a time: audio that arrives while a turn runs is dropped (so the
answer played through a loudspeaker does not trigger a new turn).
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import shutil
import subprocess
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
from fastapi import WebSocket, WebSocketDisconnect  # module level: FastAPI resolves the route's annotations here

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
SAMPLE_RATE = 16000  # what the client sends, and what webrtcvad takes
FRAME_MS = 30  # webrtcvad frames are 10, 20 or 30 ms
AUDIO_CHUNK_S = 0.25  # size of the answer's audio events


# ---- end of speech ---------------------------------------------------------------------------------
@dataclass
class VadConfig:
    """Options of :class:`Segmenter`: webrtcvad ``aggressiveness`` (0-3); speech starts when
    ``start_ms`` of the last ``window_ms`` are voiced and ends after ``silence_ms`` of (mostly)
    no voice; ``preroll_ms`` before the start is kept; utterances longer than ``max_s`` are cut."""

    aggressiveness: int = 2
    window_ms: int = 300
    start_ms: int = 150
    silence_ms: int = 600
    preroll_ms: int = 300
    tail_ms: int = 200
    min_speech_ms: int = 200
    max_s: float = 30.0

    def validate(self) -> "VadConfig":
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"vad aggressiveness must be 0, 1, 2 or 3, got {self.aggressiveness!r}")
        if not 90 <= self.silence_ms <= 5000:
            raise ValueError(f"silence_ms must be within 90..5000, got {self.silence_ms!r}")
        return self


class Segmenter:
    """Cuts a stream of 16 kHz PCM16 into utterances with webrtcvad.

    ``feed(pcm)`` returns events ``("start", None)`` and ``("end", pcm_bytes)``; with ``vad``
    off it only buffers and ``commit()`` hands the buffer over.

        >>> seg = Segmenter(VadConfig())                       # doctest: +SKIP
        >>> [kind for kind, _ in seg.feed(pcm_of_one_sentence + silence)]  # doctest: +SKIP
        ['start', 'end']
    """

    def __init__(self, config: VadConfig | None = None, vad: bool = True) -> None:
        import webrtcvad

        self.cfg = (config or VadConfig()).validate()
        self.vad_on = vad
        self._vad = webrtcvad.Vad(self.cfg.aggressiveness)
        self.frame_bytes = SAMPLE_RATE * FRAME_MS // 1000 * 2
        self.clear()

    def configure(self, **kw: Any) -> None:
        """Change options (names of :class:`VadConfig`); the buffered audio is dropped."""
        old = dict(self.cfg.__dict__)
        for k, v in kw.items():
            setattr(self.cfg, k, v)
        try:
            self.cfg.validate()
        except ValueError:
            self.cfg.__dict__.update(old)
            raise
        self._vad.set_mode(self.cfg.aggressiveness)
        self.clear()

    def clear(self) -> None:
        self._rest = b""
        self._window: deque[bool] = deque(maxlen=max(1, self.cfg.window_ms // FRAME_MS))
        self._preroll: deque[bytes] = deque(maxlen=max(1, self.cfg.preroll_ms // FRAME_MS))
        self._speech: list[bytes] = []  # frames of the current utterance (vad on), or everything (vad off)
        self._tail: deque[bool] = deque(maxlen=max(3, self.cfg.silence_ms // FRAME_MS))
        self._voiced = 0
        self.in_speech = False

    @property
    def buffered_s(self) -> float:
        return (sum(len(f) for f in self._speech) + len(self._rest)) / 2 / SAMPLE_RATE

    def feed(self, pcm: bytes) -> list[tuple[str, Optional[bytes]]]:
        data = self._rest + pcm
        n = len(data) // self.frame_bytes * self.frame_bytes
        self._rest = data[n:]
        events: list[tuple[str, Optional[bytes]]] = []
        for i in range(0, n, self.frame_bytes):
            frame = data[i : i + self.frame_bytes]
            if not self.vad_on:
                self._speech.append(frame)
                continue
            ev = self._frame(frame)
            if ev is not None:
                events.append(ev)
        if self.in_speech and len(self._speech) * FRAME_MS / 1000 >= self.cfg.max_s:
            events.append(("end", self._finish(trim=False)))  # too long: cut here, answer what was said
        return events

    def _frame(self, frame: bytes) -> Optional[tuple[str, Optional[bytes]]]:
        voiced = self._vad.is_speech(frame, SAMPLE_RATE)
        if not self.in_speech:
            self._preroll.append(frame)
            self._window.append(voiced)
            if sum(self._window) * FRAME_MS >= self.cfg.start_ms:
                self.in_speech = True
                self._speech = list(self._preroll)
                self._voiced = sum(self._window)
                self._tail.clear()
                self._preroll.clear()
                return "start", None
            return None
        self._speech.append(frame)
        self._voiced += voiced
        # the last silence_ms mostly unvoiced (a click in the pause does not keep the utterance open)
        self._tail.append(voiced)
        if len(self._tail) == self._tail.maxlen and sum(self._tail) <= self._tail.maxlen // 10:
            return "end", self._finish(trim=True)
        return None

    def _finish(self, trim: bool) -> Optional[bytes]:
        frames = self._speech
        if trim:  # keep a short tail of the silence that ended it (up to the last voiced frame + tail_ms)
            last = max((i for i, v in enumerate(self._tail) if v), default=-1)
            keep = len(frames) - len(self._tail) + last + 1 + self.cfg.tail_ms // FRAME_MS
            frames = frames[: max(1, keep)]
        voiced_ms = self._voiced * FRAME_MS
        self.in_speech, self._speech, self._voiced = False, [], 0
        self._window.clear()
        self._tail.clear()
        if voiced_ms < self.cfg.min_speech_ms:
            return None  # a click or a cough: no request
        return b"".join(frames)

    def commit(self) -> Optional[bytes]:
        """The buffered audio as one utterance (None when there is none)."""
        if self.vad_on and not self.in_speech:
            self.clear()
            return None  # nothing said since the last utterance
        frames = self._speech + ([self._rest] if self._rest else [])
        self.clear()
        pcm = b"".join(frames)
        return pcm or None


def utterance_audio(pcm: bytes, rel_db: float = -40.0, margin_ms: int = 20) -> np.ndarray:
    """An utterance's PCM16 -> the float32 waveform the agent reads: cut to the span where the
    signal comes within ``rel_db`` of its peak, plus ``margin_ms`` either side.

    The detector's cut is only frame-exact (30 ms) and keeps pre-roll and tail silence; a model
    hears silence and a shifted start as a different request, so the words are put in a fixed
    place at the sample level (the same request spoken twice gives the same input)."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    if len(x) == 0:
        return x
    loud = np.flatnonzero(np.abs(x) >= np.abs(x).max() * 10 ** (rel_db / 20))
    margin = SAMPLE_RATE * margin_ms // 1000
    return x[max(0, loud[0] - margin) : loud[-1] + 1 + margin]


# ---- the spoken answer ---------------------------------------------------------------------------------
def _to_pcm16(wav: np.ndarray) -> bytes:
    return (np.clip(np.asarray(wav, dtype=np.float32), -1, 1) * 32767).astype("<i2").tobytes()


def speech_chunks(pipe, text: str, chunk_s: float = AUDIO_CHUNK_S, config=None) -> Iterator[tuple[bytes, int]]:
    """``(pcm16 bytes, sample_rate)`` chunks of ``text`` spoken as they are made: the model's TTS
    task (its streaming decoder when the pipeline has one; ``config``: its decode options, default
    the model dir's), else espeak-ng's output as it writes it."""
    task = pipe.speech_task() if pipe is not None else None
    if task is not None:
        sr = pipe.tokenizers[pipe.template(task).targets[0].tokenizer].sample_rate
        if hasattr(pipe, "tts_stream"):
            stream = pipe.tts_stream(text, task=task, config=config)
            try:
                for chunk in stream:
                    if len(chunk):
                        yield _to_pcm16(chunk), sr
            finally:
                getattr(stream, "close", lambda: None)()  # stops decoding when the client left
            return
        wav, sr = pipe.tts(text, task=task, config=config)
        pcm, step = _to_pcm16(wav), int(sr * chunk_s) * 2
        for i in range(0, len(pcm), step):
            yield pcm[i : i + step], sr
        return
    yield from espeak_chunks(text, chunk_s)


def espeak_chunks(text: str, chunk_s: float = AUDIO_CHUNK_S) -> Iterator[tuple[bytes, int]]:
    """espeak-ng's wav on stdout, passed on as it arrives (the text goes through stdin, so it is
    never read as an option)."""
    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("the model has no TTS task and espeak-ng is not installed (apt-get install espeak-ng)")
    proc = subprocess.Popen(["espeak-ng", "--stdout", "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(text.encode("utf-8"))
        proc.stdin.close()
        header = proc.stdout.read(12)
        if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
            raise RuntimeError("espeak-ng wrote no wav")
        sr = 22050
        while True:  # chunks up to "data"; espeak-ng's fmt says PCM16 mono
            head = proc.stdout.read(8)
            if len(head) < 8:
                return
            size = int.from_bytes(head[4:8], "little")
            if head[:4] == b"data":
                break
            body = proc.stdout.read(size)
            if head[:4] == b"fmt ":
                sr = int.from_bytes(body[4:8], "little")
        step, pending = int(sr * chunk_s) * 2, b""
        while True:
            piece = proc.stdout.read1(step) if hasattr(proc.stdout, "read1") else proc.stdout.read(step)
            if not piece:
                break
            pending += piece
            if len(pending) >= step:
                cut = len(pending) // 2 * 2
                yield pending[:cut], sr
                pending = pending[cut:]
        if len(pending) >= 2:
            yield pending[: len(pending) // 2 * 2], sr
    finally:
        proc.kill()
        proc.wait()


# ---- the agent turn ------------------------------------------------------------------------------------
def _pipe_of(state: Any):
    return getattr(state, "pipe", None) or getattr(state, "pipeline", None)


def _max_audio_s(state: Any) -> float:
    limits = getattr(state, "limits", None)
    return float(getattr(limits, "max_audio_s", 60.0) or 60.0)


def session_state(state: Any, session_id: str) -> Optional[dict]:
    """The environment state a turn of ``session_id`` starts from: the session's, or the
    environment's initial state for a new session (None when the model has no agent)."""
    agent = getattr(state, "agent", None)
    if agent is None:
        return None
    sess = agent.sessions.get(session_id)
    if sess is not None and sess.run is not None:
        return sess.run.env.snapshot()
    from speechlm.agent.env import make_env

    return make_env(agent.cfg.env).snapshot()


class RealtimeConnection:
    """One WebSocket client: segments its audio, runs the agent on each utterance, sends events."""

    def __init__(self, ws, state: Any, session_id: str) -> None:
        self.ws, self.state, self.session_id = ws, state, session_id
        self.seg = Segmenter(VadConfig(max_s=_max_audio_s(state)))
        self.speak = True
        self.busy: Optional[asyncio.Task] = None
        self.cancel = threading.Event()  # set when the client leaves: the agent stops between steps
        self._send_lock = asyncio.Lock()

    async def send(self, event: dict) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(event, ensure_ascii=False))

    async def error(self, message: str) -> None:
        await self.send({"type": "error", "message": message})

    def start_turn(self, request: bytes | str) -> None:
        self.busy = asyncio.create_task(self.turn(request))

    async def _in_worker(self, fn, *args, executor: str = "agent_executor"):
        """Run blocking work on the app's agent (or audio) threads, else asyncio's default ones."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(getattr(self.state, executor, None), fn, *args)

    async def speak_answer(self, answer: str) -> None:
        """Send the spoken answer as ``audio`` events, each chunk as soon as it is made (within
        the app's limit of audio streams made at once)."""
        slots = getattr(self.state, "stream_slots", None) or contextlib.nullcontext()
        async with slots:
            it = speech_chunks(_pipe_of(self.state), answer)
            try:
                while True:
                    item = await self._in_worker(next, it, None, executor="stream_executor")
                    if item is None:
                        break
                    pcm, sr = item
                    await self.send({"type": "audio", "data": base64.b64encode(pcm).decode("ascii"),
                                     "sample_rate": sr})
            finally:
                with contextlib.suppress(ValueError):  # still running in its thread: it ends on its own
                    await self._in_worker(it.close, executor="stream_executor")  # stops espeak-ng / the decoder

    async def turn(self, request: bytes | str) -> None:
        """Run the agent on one request (events sent as the agent makes them), speak the answer,
        then send ``done``."""
        from speechlm.serve.agent_session import run_agent_turn

        loop = asyncio.get_running_loop()

        def on_event(ev: dict) -> None:  # from the agent's thread: hand the event to the event loop
            if ev.get("type") not in ("transcript", "tool_call", "answer") or self.cancel.is_set():
                return  # the state goes out after the turn, with its changes
            try:
                asyncio.run_coroutine_threadsafe(self.send(ev), loop).result(timeout=30)
            except Exception:  # the client is gone: let the agent stop after this step
                self.cancel.set()

        try:
            if isinstance(request, bytes):  # PCM16 at 16 kHz -> the waveform the agent reads
                audio = (utterance_audio(request), SAMPLE_RATE)
                result = await self._in_worker(
                    lambda: run_agent_turn(self.state, self.session_id, audio=audio, on_event=on_event,
                                           cancel=self.cancel))
            else:
                result = await self._in_worker(
                    lambda: run_agent_turn(self.state, self.session_id, text=request, on_event=on_event,
                                           cancel=self.cancel))
            if result.get("ended") not in ("answer", None):
                why = result.get("error") or {"invalid": "the model's turn was not a valid call or answer",
                                              "max_turns": "too many steps without an answer"}.get(result["ended"])
                await self.send({"type": "error", "message": f"no answer ({result['ended']}): {why}"})
            await self.send({"type": "state", "state": result.get("state"), "changes": result.get("changes", [])})
            answer = result.get("answer")
            if self.speak and answer:
                await self.speak_answer(answer)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a failed turn is reported, never a traceback to the client
            status = getattr(e, "status", None)  # an APIError: the client's request was at fault
            if status is None:
                log.exception("realtime session %s: the turn failed", self.session_id)
            msg = getattr(e, "message", None) or str(e) or type(e).__name__
            await self.error(f"the turn failed: {msg}" if status is None else str(msg))
        finally:
            self.seg.clear()  # what was said meanwhile is not a request (half duplex)
        with contextlib.suppress(Exception):  # the client may be gone
            await self.send({"type": "done"})

    async def on_audio(self, pcm: bytes) -> None:
        if self.busy is not None and not self.busy.done():
            return  # half duplex: drop audio while answering
        if len(pcm) % 2:
            await self.error("binary frames are 16 kHz mono PCM16: an even number of bytes")
            return
        for kind, utt in self.seg.feed(pcm):
            if kind == "start":
                await self.send({"type": "speech_started"})
            else:
                dur = len(utt) / 2 / SAMPLE_RATE if utt else 0.0
                # request false: too little voice to be one (a click): listening goes on
                await self.send({"type": "speech_stopped", "duration": round(dur, 3), "request": utt is not None})
                if utt:
                    self.start_turn(utt)
                    return
        if not self.seg.vad_on and self.seg.buffered_s > self.seg.cfg.max_s:
            self.seg.clear()
            await self.error(f"more than {self.seg.cfg.max_s:g} s of audio without a commit: dropped")

    async def on_control(self, text: str) -> None:
        try:
            msg = json.loads(text)
            if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                raise ValueError("a control message is a JSON object with a string 'type'")
        except ValueError as e:
            await self.error(f"bad control message: {e}")
            return
        kind = msg["type"]
        idle = self.busy is None or self.busy.done()
        if kind == "config":
            try:
                vad_keys = {k: msg[k] for k in ("silence_ms", "aggressiveness") if k in msg}
                if any(not isinstance(v, int) or isinstance(v, bool) for v in vad_keys.values()):
                    raise ValueError("silence_ms and aggressiveness are integers")
                if vad_keys:
                    self.seg.configure(**vad_keys)
            except ValueError as e:
                await self.error(f"config: {e}")
                return
            if "vad" in msg:
                self.seg.vad_on = bool(msg["vad"])
                self.seg.clear()
            if "speak" in msg:
                self.speak = bool(msg["speak"])
        elif kind == "clear":
            self.seg.clear()
        elif kind == "commit":
            if not idle:
                await self.error("a turn is running; wait for 'done'")
                return
            utt = self.seg.commit()
            if utt is None:
                await self.error("commit: no speech since the last request")
                return
            await self.send({"type": "speech_stopped", "duration": round(len(utt) / 2 / SAMPLE_RATE, 3),
                             "request": True})
            self.start_turn(utt)
        elif kind == "text":
            words = msg.get("text")
            most = int(getattr(getattr(self.state, "limits", None), "max_text_chars", 4096))
            if not isinstance(words, str) or not words.strip():
                await self.error("text: give the request's words in 'text'")
            elif len(words) > most:
                await self.error(f"text: {len(words)} characters; at most {most}")
            elif not idle:
                await self.error("a turn is running; wait for 'done'")
            else:
                self.start_turn(words.strip())
        else:
            await self.error(f"unknown message type {kind!r}: use config, commit, clear or text")


def add_realtime_routes(app, state: Any) -> None:
    """Add ``GET /`` (the demo page), ``/static`` and the WebSocket ``/v1/realtime`` to ``app``."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    @app.websocket("/v1/realtime")
    async def realtime(ws: WebSocket) -> None:
        from speechlm.serve.agent_session import check_session_id
        from speechlm.serve.openai_format import APIError

        key = _api_key_of(state)
        if key:  # browsers cannot set headers on a WebSocket: ?api_key= as well as Authorization
            auth = ws.headers.get("authorization", "")
            given = ws.query_params.get("api_key") or (auth[7:] if auth.lower().startswith("bearer ") else "")
            if not hmac.compare_digest(given.encode(), key.encode()):
                # accepted first so that a browser gets the reason (a refused handshake is a bare 403)
                await _refuse(ws, "invalid or missing API key: add ?api_key=KEY to the URL (or Authorization: Bearer)")
                return
        try:
            session_id = check_session_id(ws.query_params.get("session_id"))
        except APIError as e:
            await _refuse(ws, e.message)
            return
        await ws.accept()
        conn = RealtimeConnection(ws, state, session_id)
        try:
            await conn.send({"type": "ready", "session_id": session_id, "sample_rate": SAMPLE_RATE,
                             "state": session_state(state, session_id)})
            while True:
                msg = await ws.receive()
                if msg["type"] == "websocket.disconnect":
                    break
                if msg.get("bytes") is not None:
                    await conn.on_audio(msg["bytes"])
                elif msg.get("text") is not None:
                    await conn.on_control(msg["text"])
        except WebSocketDisconnect:
            pass
        finally:
            conn.cancel.set()  # the client left: its turn stops after the current step (frees its slot)
            if conn.busy is not None and not conn.busy.done():
                conn.busy.cancel()


async def _refuse(ws: WebSocket, message: str) -> None:
    """Accept, send one error event, close with 1008 (policy violation)."""
    await ws.accept()
    await ws.send_text(json.dumps({"type": "error", "message": message}))
    await ws.close(code=1008, reason=message[:120])


def _api_key_of(state: Any) -> Optional[str]:
    return getattr(state, "api_key", None)


__all__ = ["add_realtime_routes", "Segmenter", "VadConfig", "utterance_audio", "speech_chunks", "espeak_chunks", "session_state",
           "SAMPLE_RATE"]

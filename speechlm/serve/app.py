"""The HTTP server of a packed model: OpenAI-compatible endpoints on FastAPI (``speechlm serve``).

Endpoints (shapes in docs/interfaces.md, "Serving"):

- ``GET /health``, ``GET /v1/models`` (OpenAI list of the one served model), ``GET /v1/tools``
  (the agent environment's tools in OpenAI ``tools`` form);
- ``POST /v1/audio/transcriptions``: multipart ``file`` (+ ``model``, ``response_format`` json | text
  | verbose_json, ``temperature``), the model's ``asr`` task through the batching scheduler;
- ``POST /v1/audio/speech``: JSON ``input``, ``voice``, ``response_format`` wav | pcm, ``speed``
  (-> ``length_scale = 1 / speed``); the audio is streamed (chunked) as the model makes it;
- ``POST /v1/chat/completions``: the voice agent, one user turn per request (``input_audio`` part
  or text), its tool calls run on the session's environment; ``stream: true`` = server-sent events;
- ``GET`` / ``DELETE /v1/sessions/{id}``: a session's dialogue and environment state / forget it;
- ``GET /`` (the demo page) and the WebSocket ``/v1/realtime`` (:mod:`speechlm.serve.realtime`).

Safe by default: ``speechlm serve`` binds 127.0.0.1; with an API key every request but ``/health``
and the demo page needs ``Authorization: Bearer KEY`` (401); bodies over ``max_request_bytes`` and
audio over ``max_audio_s`` are refused (413); request strings never reach a shell or a file path
(the pipeline has ``allow_pipes=False``; voices are looked up by name); every error is a JSON
``{"error": {"message", "type", "param", "code"}}``, never a traceback; a client that goes away
cancels its waiting decode request, its agent turn (after the running step) or its audio stream.

``app.state.speechlm`` is the :class:`ServerState` (pipeline, scheduler, sessions, limits, agent,
executors) that the realtime routes and :func:`run_agent_turn` use.

Example:
    >>> app = create_app("exp/agent/packed", api_key="secret")        # doctest: +SKIP
    >>> uvicorn.run(app, host="127.0.0.1", port=8000)                # doctest: +SKIP
"""
from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Request  # module level: the endpoints' annotations are resolved against these globals

from speechlm.serve.agent_session import AgentService, SessionStore, check_session_id, run_agent_turn
from speechlm.serve.asgi import ClientGone, GuardMiddleware, iterate_in_thread, read_json, until_disconnect
from speechlm.serve.openai_format import (SPEECH_FORMATS, TRANSCRIPTION_FORMATS, APIError, AudioOutput, ChatRequest,
                                          SpeechRequest, VoiceRef, chat_chunk, chat_completion, error_body,
                                          finish_reason, last_user_message, model_list, new_id, parse_body, sse,
                                          speechlm_extra, tool_call, tools_list, transcription, user_turn_content)

log = logging.getLogger(__name__)

DEFAULT_VOICE = "default"  # the model's prompt-free TTS task


@dataclass
class Limits:
    """What one request may ask of the server (``speechlm serve`` flags in brackets)."""

    max_request_bytes: int = 25 * 2**20  # [--max-request-mb] body size (413)
    max_audio_s: float = 60.0  # [--max-audio-s] an uploaded recording or voice prompt (413)
    max_text_chars: int = 4096  # /v1/audio/speech input (413)
    max_streams: int = 4  # [--max-streams] audio streams generated at once (others wait)
    max_sessions: int = 256  # agent sessions kept (the least recently used idle one goes first)
    session_ttl_s: float = 3600.0  # an idle session is dropped after this
    agent_workers: int = 16  # agent turns running at once (their decode steps share batches)

    def validate(self) -> Limits:
        for f in dataclasses.fields(self):
            if getattr(self, f.name) <= 0:
                raise ValueError(f"serve limits: {f.name} must be > 0, got {getattr(self, f.name)}")
        return self


@dataclass
class ServerState:
    """Everything the endpoints share; ``app.state.speechlm``.

    ``pipe``: the :class:`~speechlm.infer.pipeline.Pipeline` (``allow_pipes=False``);
    ``scheduler``: the :class:`~speechlm.serve.scheduler.BatchScheduler` (``await
    scheduler.submit(task, inputs, config)`` -> n-best texts); ``sessions``: the agent's
    :class:`~speechlm.serve.agent_session.SessionStore` (``state_of(id)``, ``describe(id)``);
    ``agent``: the :class:`~speechlm.serve.agent_session.AgentService`, None when the model has
    no agent task (``agent_error`` says why); ``agent_executor``: threads for
    :func:`run_agent_turn`; ``stream_slots``: a semaphore of ``limits.max_streams``.
    """

    pipe: Any
    model_id: str
    scheduler: Any
    sessions: SessionStore
    limits: Limits
    api_key: str | None = None
    agent: AgentService | None = None
    agent_error: str | None = None
    voices: dict[str, Path] = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))
    agent_executor: concurrent.futures.ThreadPoolExecutor = None  # type: ignore[assignment]
    stream_executor: concurrent.futures.ThreadPoolExecutor = None  # type: ignore[assignment]
    stream_slots: asyncio.Semaphore = None  # type: ignore[assignment]
    active_streams: int = 0
    stream_counts: collections.Counter = field(default_factory=collections.Counter)  # completed/cancelled/failed

    @property
    def pipeline(self):
        return self.pipe

    def close(self) -> None:
        self.scheduler.close(wait=False)
        self.agent_executor.shutdown(wait=False, cancel_futures=True)
        self.stream_executor.shutdown(wait=False, cancel_futures=True)


# ---- helpers -----------------------------------------------------------------------------------------
def scheduler_errors(e: BaseException) -> APIError | None:
    """The client-facing error of a scheduler exception (None: a server error)."""
    from speechlm.serve.scheduler import QueueFull, RequestError, SchedulerClosed

    if isinstance(e, RequestError):
        return APIError(400, str(e))
    if isinstance(e, QueueFull):
        return APIError(503, str(e))
    if isinstance(e, SchedulerClosed):
        return APIError(503, "the server is shutting down")
    return None


# ---- the app ---------------------------------------------------------------------------------------------
def create_app(model_dir, *, api_key: str | None = None, limits: Limits | None = None, max_batch: int = 16,
               window_s: float = 0.01, agent_mode: str = "e2e", dialogue_task: str | None = None,
               max_agent_steps: int = 4, model_name: str | None = None, device: str = "cpu",
               realtime: bool = True):
    """The FastAPI app serving ``model_dir`` (a path, or a loaded Pipeline). ``agent_mode`` /
    ``dialogue_task``: how the agent hears the user (see :mod:`speechlm.agent.loop`); a model
    without that task serves the other endpoints and answers the agent's with 404. ``dialogue_task``
    None: ``spoken_dialogue`` if the model has it, else ``spoken_dialogue_monologue``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import (
        JSONResponse,
        PlainTextResponse,
        Response,
        StreamingResponse,
    )
    from starlette.exceptions import HTTPException as StarletteHTTPException

    import speechlm
    from speechlm.agent.loop import LoopConfig
    from speechlm.agent.tools import TOOLS
    from speechlm.serve.scheduler import BatchScheduler

    limits = (limits or Limits()).validate()
    if isinstance(model_dir, (str, Path)):
        pipe = speechlm.load(model_dir, device=device, allow_pipes=False)
    else:
        pipe = model_dir
    pipe.allow_pipes = False  # a request's string is never a shell command
    path = Path(pipe.path) if pipe.path is not None else None
    model_id = model_name or (path.name if path is not None else "speechlm")
    scheduler = BatchScheduler(pipe, max_batch=max_batch, window_s=window_s)
    sessions = SessionStore(limits.max_sessions, limits.session_ttl_s)
    state = ServerState(pipe, model_id, scheduler, sessions, limits, api_key or None, voices=pipe.voices)
    state.agent_executor = concurrent.futures.ThreadPoolExecutor(limits.agent_workers, thread_name_prefix="speechlm-agent")
    state.stream_executor = concurrent.futures.ThreadPoolExecutor(limits.max_streams, thread_name_prefix="speechlm-tts")
    state.stream_slots = asyncio.Semaphore(limits.max_streams)
    try:
        cfg = LoopConfig(mode=agent_mode, max_turns=max_agent_steps, batch_size=1,
                         dialogue_task=dialogue_task or "")
        state.agent = AgentService(pipe, scheduler.submit_sync, cfg, sessions, limits.max_audio_s)
    except (KeyError, ValueError) as e:  # no agent task in this model: the other endpoints still work
        state.agent_error = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
        log.info("no voice agent on this model: %s", state.agent_error)
    default_task, prompted_task = pipe.speech_task(), pipe.tts_task(True)  # default: no prompt from the client

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        state.close()

    app = FastAPI(title="speechlm", version=speechlm.__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, lifespan=lifespan)
    app.state.speechlm = state

    # ---- errors: JSON, never a traceback
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        msg = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404:
            msg = f"no endpoint {request.method} {request.url.path}"
        return JSONResponse(error_body(e.status_code, msg), status_code=e.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        return JSONResponse(error_body(400, f"invalid request: {e.errors()[:1]}"), status_code=400)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, e: ClientGone):
        return Response(status_code=499)  # nobody reads it: the client closed the connection

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        mapped = scheduler_errors(e)
        if mapped is not None:
            return JSONResponse(mapped.body(), status_code=mapped.status)
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse(error_body(500, f"internal error ({type(e).__name__}); see the server log"),
                            status_code=500)

    # ---- info
    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "tasks": sorted(pipe.templates), "sessions": len(sessions),
                "active_streams": state.active_streams,
                "streams": dict(state.stream_counts), "agent": state.agent is not None,
                "scheduler": scheduler.stats()}

    @app.get("/v1/models")
    async def models():
        return model_list(model_id, state.created, {
            "tasks": sorted(pipe.templates), "voices": ([DEFAULT_VOICE] if default_task else []) + list(state.voices),
            "agent": None if state.agent is None else {"mode": agent_mode, "task": state.agent.task,
                                                       "tools": len(TOOLS.names())}})

    @app.get("/v1/models/{name}")
    async def model(name: str):
        if name != model_id:
            raise APIError(404, f"no model {name!r}; this server serves {model_id!r}", "model")
        return model_list(model_id, state.created, {})["data"][0]

    @app.get("/v1/tools")
    async def tools():
        return {"object": "list", "data": tools_list(TOOLS.get(n) for n in TOOLS.names())}

    # ---- transcriptions
    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request):
        from starlette.datastructures import UploadFile

        from speechlm.serve.audio_io import decode_audio

        if "asr" not in pipe.templates:
            raise APIError(404, f"this model has no asr task (it has: {', '.join(sorted(pipe.templates))})")
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise APIError(400, "send multipart/form-data with the audio in 'file'")
        try:
            form = await request.form(max_files=1, max_fields=32)
        except APIError:
            raise
        except Exception as e:  # a malformed multipart body
            raise APIError(400, f"could not read the multipart body ({e})") from None
        try:  # the form's spooled files are closed however this ends
            upload = form.get("file")
            if not isinstance(upload, UploadFile):
                raise APIError(400, "the audio file goes in the multipart field 'file'", "file")
            fmt = str(form.get("response_format") or "json")
            if fmt not in TRANSCRIPTION_FORMATS:
                raise APIError(400, f"response_format {fmt!r}: use one of {', '.join(TRANSCRIPTION_FORMATS)}",
                               "response_format")
            config = None
            temperature = form.get("temperature")
            if temperature not in (None, ""):
                try:
                    t = float(str(temperature))
                except ValueError:
                    raise APIError(400, f"temperature {temperature!r} is not a number", "temperature") from None
                if not 0 <= t <= 2:
                    raise APIError(400, "temperature must be within [0, 2]", "temperature")
                if t > 0:
                    config = dataclasses.replace(pipe.decode_config("asr"), search="sample", temperature=t, nbest=1)
            data = await upload.read()
        finally:
            await form.close()
        wav, sr = await asyncio.to_thread(decode_audio, data, limits.max_audio_s, "file")
        seg = pipe.template("asr").conditions[0].name
        texts = await until_disconnect(request, scheduler.submit("asr", {seg: (wav, sr)}, config))
        out = transcription(texts[0] if texts else "", fmt, len(wav) / sr)
        return PlainTextResponse(out) if isinstance(out, str) else out

    # ---- speech
    def resolve_voice(voice: str | VoiceRef) -> tuple[str, Any]:
        """(TTS task, speaker prompt value) of a request's voice."""
        from speechlm.serve.audio_io import decode_audio, decode_base64

        voice = voice.id if isinstance(voice, VoiceRef) else voice
        known = ([DEFAULT_VOICE] if default_task else []) + list(state.voices)
        if voice == DEFAULT_VOICE and default_task:
            return default_task, None
        if voice in state.voices or voice.startswith("data:"):
            if prompted_task is None:
                raise APIError(400, f"voice {voice[:40]!r}: this model has no speaker-prompted TTS task; use "
                                    f"{DEFAULT_VOICE!r}", "voice")
            if voice in state.voices:
                return prompted_task, str(state.voices[voice])
            data = decode_base64(voice, limits.max_request_bytes, "voice")
            return prompted_task, decode_audio(data, limits.max_audio_s, "voice")
        if not known:
            raise APIError(404, "this model has no TTS task (plain_tts, or tts with voices/<name>.wav in the model dir)")
        raise APIError(400, f"unknown voice {voice[:40]!r}; this model has: {', '.join(known)} (or upload a speaker "
                            "prompt as data:audio/wav;base64,...)", "voice")

    @app.post("/v1/audio/speech")
    async def speech(request: Request):
        from speechlm.serve.audio_io import pcm16, wav_header

        req = parse_body(SpeechRequest, await read_json(request), "audio.speech")
        if len(req.input) > limits.max_text_chars:
            raise APIError(413, f"input: {len(req.input)} characters; at most {limits.max_text_chars}", "input")
        if req.response_format not in SPEECH_FORMATS:
            raise APIError(400, f"response_format {req.response_format!r}: this server writes "
                                f"{' or '.join(SPEECH_FORMATS)}", "response_format")
        if req.stream_format not in (None, "audio"):
            raise APIError(400, "stream_format: only 'audio' (the audio bytes, chunked) is supported", "stream_format")
        task, prompt = await asyncio.to_thread(resolve_voice, req.voice)
        config = dataclasses.replace(pipe.decode_config(task), length_scale=1.0 / req.speed)

        def open_stream():
            """The model's audio stream (decoding starts at the first chunk); a text of no phones or a
            prompt too long for the context raises here: a 400 before any audio."""
            return pipe.tts_stream(req.input, speaker_prompt=prompt, task=task, config=config)

        try:
            stream = await asyncio.to_thread(open_stream)
        except (ValueError, OSError) as e:  # InputError, StreamError, AudioError
            raise APIError(400, str(e), "input") from None
        sr = pipe.sample_rate_of(task)

        async def body() -> AsyncIterator[bytes]:
            async with state.stream_slots:  # released when done, failed or the client left
                state.active_streams += 1
                ended = "cancelled"  # until the last chunk is out
                try:
                    if req.response_format == "wav":
                        yield wav_header(sr)
                    async for chunk in iterate_in_thread(state.stream_executor, lambda: stream,
                                                         on_close=lambda: stream.close(wait=False)):
                        if len(chunk):
                            yield pcm16(chunk)
                    ended = "completed"
                except Exception:  # headers are out: log it and end the stream early
                    ended = "failed"
                    log.exception("audio.speech: synthesis failed")
                finally:
                    state.active_streams -= 1
                    state.stream_counts[ended] += 1

        media = "audio/wav" if req.response_format == "wav" else "audio/pcm"
        return StreamingResponse(body(), media_type=media, headers={
            "X-Sample-Rate": str(sr), "X-Speechlm-Task": task, "Cache-Control": "no-store"})

    # ---- the voice agent
    async def agent_request(request: Request) -> tuple[ChatRequest, str, Any]:
        from speechlm.serve.audio_io import decode_audio, decode_base64

        req = parse_body(ChatRequest, await read_json(request), "chat.completions")
        if state.agent is None:
            raise APIError(404, f"this model has no voice-agent task ({state.agent_error})")
        text, audio = user_turn_content(last_user_message(req))
        sid = check_session_id(request.headers.get("x-session-id") or req.user)
        if audio is not None:
            data = decode_base64(audio.data, limits.max_request_bytes, "input_audio")
            value: Any = await asyncio.to_thread(decode_audio, data, limits.max_audio_s, "input_audio")
        else:
            value = text
        return req, sid, value

    async def spoken_chunks(text: str, task: str, prompt: Any) -> AsyncIterator[np.ndarray]:
        """The answer spoken by the model's TTS, chunk by chunk (within the stream slots); an answer
        that gives no phones is logged and left unspoken."""
        async with state.stream_slots:
            try:
                stream = await asyncio.to_thread(pipe.tts_stream, text, speaker_prompt=prompt, task=task)
            except ValueError as e:
                log.warning("the answer %r is not spoken: %s", text, e)
                return
            async for chunk in iterate_in_thread(state.stream_executor, lambda: stream,
                                                 on_close=lambda: stream.close(wait=False)):
                yield chunk

    async def audio_output(req: ChatRequest) -> tuple[str, Any, str] | None:
        """(task, prompt, format) when the request asks for a spoken answer (``modalities`` with
        ``audio``), checked before the turn runs."""
        if not req.modalities or "audio" not in req.modalities:
            return None
        out = req.audio or AudioOutput()
        fmt = "pcm16" if out.format == "pcm" else out.format
        if fmt not in ("wav", "pcm16") or (req.stream and fmt != "pcm16"):
            raise APIError(400, f"audio.format {out.format!r}: use wav or pcm16 (pcm16 with stream: true)", "audio")
        task, prompt = await asyncio.to_thread(resolve_voice, out.voice)
        return task, prompt, fmt

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        from speechlm.serve.audio_io import pcm16, wav_bytes

        req, sid, value = await agent_request(request)
        speak = await audio_output(req)
        headers = {"X-Session-Id": sid}
        if req.stream:
            return StreamingResponse(chat_stream(sid, value, speak), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-store"})
        cancel = threading.Event()
        loop = asyncio.get_running_loop()
        turn = await until_disconnect(request, loop.run_in_executor(
            state.agent_executor, functools.partial(run_agent_turn, state, sid, value, None, cancel)), cancel)
        if turn["ended"] == "input_error":
            raise APIError(400, turn["error"] or "the input cannot be decoded")
        audio = None
        if speak is not None and turn["answer"]:
            task, prompt, fmt = speak

            async def collect() -> list[np.ndarray]:
                return [c async for c in spoken_chunks(turn["answer"], task, prompt)]

            chunks = await until_disconnect(request, collect())
            if chunks:
                wav = np.concatenate(chunks)
                data = wav_bytes(wav, pipe.sample_rate_of(task)) if fmt == "wav" else pcm16(wav)
                audio = {"id": new_id("audio"), "data": base64.b64encode(data).decode("ascii"),
                         "expires_at": int(time.time()) + 3600, "transcript": turn["answer"]}
        return JSONResponse(chat_completion(turn, model_id, audio), headers=headers)

    async def chat_stream(sid: str, value: Any, speak: tuple | None) -> AsyncIterator[bytes]:
        """``chat.completion.chunk`` events as the turn goes: the role, each tool call as the
        environment runs it (its result under ``speechlm``), the answer (and its speech as
        ``delta.audio`` PCM16 chunks when asked), the finish reason."""
        cid, created = new_id("chatcmpl"), int(time.time())
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def sink(ev: dict) -> None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(events.put_nowait, ev)

        fut = loop.run_in_executor(state.agent_executor,
                                   functools.partial(run_agent_turn, state, sid, value, sink, cancel))
        # a turn whose client left is still retrieved (no "exception never retrieved" noise)
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        n_calls = 0
        try:
            yield sse(chat_chunk(cid, created, model_id, {"role": "assistant", "content": ""},
                                 extra={"session_id": sid}))
            while True:
                get = asyncio.ensure_future(events.get())
                done, _ = await asyncio.wait({get, fut}, return_when=asyncio.FIRST_COMPLETED)
                if get not in done:
                    get.cancel()
                    if events.empty():
                        break
                    continue
                ev = get.result()
                if ev["type"] == "transcript":
                    yield sse(chat_chunk(cid, created, model_id, {}, extra={"type": "transcript", "text": ev["text"]}))
                elif ev["type"] == "tool_call":
                    call = {"id": ev["id"], "name": ev["name"], "arguments": ev["arguments"]}
                    yield sse(chat_chunk(cid, created, model_id, {"tool_calls": [{"index": n_calls, **tool_call(call)}]},
                                         extra={"type": "tool_result", "tool_call_id": ev["id"], "ok": ev["ok"],
                                                "content": ev["result"]}))
                    n_calls += 1
                elif ev["type"] == "answer":
                    yield sse(chat_chunk(cid, created, model_id, {"content": ev["text"]}))
            try:
                turn = fut.result()
            except Exception as e:
                err = e if isinstance(e, APIError) else scheduler_errors(e)
                if err is None:
                    log.exception("chat.completions stream failed")
                    err = APIError(500, f"internal error ({type(e).__name__}); see the server log")
                yield sse(err.body())
                yield sse("[DONE]")
                return
            if turn["ended"] == "input_error":
                yield sse(APIError(400, turn["error"] or "the input cannot be decoded").body())
            if speak is not None and turn["answer"]:
                from speechlm.serve.audio_io import pcm16

                task, prompt, _ = speak
                aid, sr = new_id("audio"), pipe.sample_rate_of(task)
                async for chunk in spoken_chunks(turn["answer"], task, prompt):
                    yield sse(chat_chunk(cid, created, model_id, {"audio": {
                        "id": aid, "data": base64.b64encode(pcm16(chunk)).decode("ascii")}},
                        extra={"type": "audio", "sample_rate": sr}))
                # as OpenAI streams it: the transcript in an update, the expiry alone in the last one
                yield sse(chat_chunk(cid, created, model_id, {"audio": {"id": aid, "transcript": turn["answer"]}}))
                yield sse(chat_chunk(cid, created, model_id, {"audio": {"id": aid,
                                                                         "expires_at": int(time.time()) + 3600}}))
            yield sse(chat_chunk(cid, created, model_id, {}, finish_reason(turn), extra=speechlm_extra(turn)))
            yield sse("[DONE]")
        finally:
            cancel.set()  # a client that left stops its turn after the running step

    # ---- sessions
    @app.get("/v1/sessions/{sid}")
    async def session_info(sid: str):
        return sessions.describe(check_session_id(sid))

    @app.delete("/v1/sessions/{sid}")
    async def session_drop(sid: str):
        if not sessions.drop(check_session_id(sid)):
            raise APIError(404, f"no session {sid!r}")
        return {"id": sid, "object": "speechlm.session", "deleted": True}

    if realtime:
        from speechlm.serve.realtime import add_realtime_routes

        add_realtime_routes(app, state)
    # outermost: the checks run before routing and before any body is read
    app.add_middleware(GuardMiddleware, api_key=state.api_key, max_bytes=limits.max_request_bytes)
    return app


__all__ = ["GuardMiddleware", "Limits", "ServerState", "create_app", "run_agent_turn"]

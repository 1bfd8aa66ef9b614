"""The JSON shapes of the OpenAI API that the server speaks: request bodies (validated with
pydantic, so a malformed request is a 400 naming the field), responses and errors.

Only what the ``openai`` client sends and reads is modelled; fields of OpenAI's API that a
speechlm model cannot honour (``instructions``, ``logprobs``, ...) are accepted and ignored where
ignoring them changes nothing a client relies on, and refused (400) where it would (an audio
format we do not write, ``n > 1``). Extra fields a client may read are under ``speechlm`` keys.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# ---- errors ----------------------------------------------------------------------------------------
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "request_too_large", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "overloaded_error"}


class APIError(Exception):
    """An error the client gets as ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict:
        return error_body(self.status, self.message, self.param, self.code)


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def validation_message(err: ValidationError, what: str) -> tuple[str, str | None]:
    """A one-line message naming the first bad field of a pydantic error, and the field's path."""
    first = err.errors()[0]
    loc = ".".join(str(x) for x in first.get("loc", ()))
    msg = first.get("msg", "invalid value")
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    return f"{what}: {loc or 'body'}: {msg}{more}", loc or None


def parse_body(model: type[BaseModel], data: Any, what: str) -> Any:
    """``model`` from a decoded JSON body, or an :class:`APIError` 400 naming the bad field."""
    if not isinstance(data, dict):
        raise APIError(400, f"{what}: the body must be a JSON object, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        msg, loc = validation_message(e, what)
        raise APIError(400, msg, loc) from None


# ---- requests --------------------------------------------------------------------------------------
class _Lenient(BaseModel):
    # OpenAI clients send fields we do not model (metadata, store, ...): accepted and ignored
    model_config = ConfigDict(extra="ignore")


class VoiceRef(_Lenient):
    id: str


class SpeechRequest(_Lenient):
    """``POST /v1/audio/speech``. ``voice``: a name (``voices/<name>.wav`` in the model dir, or
    ``default`` for the model's prompt-free TTS), ``{"id": name}``, or an uploaded prompt as a
    ``data:audio/wav;base64,...`` URL."""

    model: str = ""
    input: str = Field(min_length=1)
    voice: str | VoiceRef = "default"
    response_format: str = "wav"
    speed: float = Field(1.0, gt=0.0, le=4.0)
    stream_format: str | None = None
    instructions: str | None = None  # no speechlm model follows style instructions: ignored


class InputAudio(_Lenient):
    data: str
    format: str = "wav"


class ContentPart(_Lenient):
    type: str
    text: str | None = None
    input_audio: InputAudio | None = None


class ChatMessage(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None


class AudioOutput(_Lenient):
    voice: str | VoiceRef = "default"
    format: str = "wav"


class ChatRequest(_Lenient):
    """``POST /v1/chat/completions``: the voice agent (see :func:`speechlm.serve.agent_session.run_agent_turn`)."""

    model: str = ""
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    user: str | None = None
    n: int = Field(1, ge=1, le=1)
    tools: list[dict] | None = None  # the environment's tools are the ones used: see /v1/tools
    tool_choice: Any = None
    modalities: list[str] | None = None
    audio: AudioOutput | None = None
    temperature: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    stream_options: dict | None = None


def last_user_message(req: ChatRequest) -> ChatMessage:
    """The new user turn of a chat request: its last message, which must be the user's. Earlier
    messages are not replayed: the session (``X-Session-Id``) holds the dialogue and the
    environment's state, so a client sends each user turn once."""
    msg = req.messages[-1]
    if msg.role != "user":
        raise APIError(400, f"messages: the last message must be the user's new turn, got role {msg.role!r} "
                            "(the server keeps the dialogue per session; send one user turn per request)", "messages")
    return msg


def user_turn_content(msg: ChatMessage) -> tuple[str | None, InputAudio | None]:
    """(text, audio) of a user message: one ``input_audio`` part, or text (a string or text parts)."""
    if msg.content is None or (isinstance(msg.content, str) and not msg.content.strip()):
        raise APIError(400, "messages[-1].content: empty; send text or an input_audio part", "messages")
    if isinstance(msg.content, str):
        return msg.content, None
    audio = [p.input_audio for p in msg.content if p.type == "input_audio"]
    texts = [p.text for p in msg.content if p.type == "text" and p.text]
    bad = [p.type for p in msg.content if p.type not in ("input_audio", "text")]
    if bad:
        raise APIError(400, f"messages[-1].content: part type {bad[0]!r} is not supported; use 'text' or "
                            "'input_audio'", "messages")
    if any(a is None for a in audio):
        raise APIError(400, "messages[-1].content: an input_audio part needs {'input_audio': {'data', 'format'}}",
                       "messages")
    if len(audio) > 1:
        raise APIError(400, "messages[-1].content: one input_audio part per user turn", "messages")
    if audio:
        return None, audio[0]
    if not texts:
        raise APIError(400, "messages[-1].content: no text and no input_audio part", "messages")
    return " ".join(texts), None


# ---- responses ---------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def model_list(model_id: str, created: int, extra: dict) -> dict:
    """``GET /v1/models``: OpenAI's list of one model (``speechlm``: tasks, voices, tools)."""
    return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created,
                                         "owned_by": "speechlm", "speechlm": extra}]}


def tools_list(tools) -> list[dict]:
    """Registered :class:`~speechlm.agent.tools.base.Tool` objects in OpenAI ``tools`` form."""
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


def tool_call(call: dict) -> dict:
    """A call the agent ran (``{"id", "name", "arguments"}``) in OpenAI ``tool_calls`` form."""
    return {"id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}


def tool_result(call: dict) -> dict:
    """What the environment answered to a call: OpenAI's tool-message shape plus ``ok``."""
    return {"role": "tool", "tool_call_id": call["id"], "name": call["name"], "ok": call["ok"],
            "content": call["result"]}


def finish_reason(turn: dict) -> str:
    """``stop`` when the agent answered, ``length`` when it ran out of steps, else ``stop``
    (the calls were run by the server: the client has nothing to execute)."""
    return "length" if turn["ended"] == "max_turns" else "stop"


def speechlm_extra(turn: dict) -> dict:
    return {k: turn[k] for k in ("session_id", "transcript", "ended", "error", "state", "invalid", "steps")}


def chat_completion(turn: dict, model_id: str, audio: dict | None = None) -> dict:
    """The ``chat.completion`` object of one agent turn (:func:`run_agent_turn`'s dict)."""
    message: dict[str, Any] = {"role": "assistant", "content": turn["answer"], "refusal": None}
    if turn["calls"]:
        message["tool_calls"] = [tool_call(c) for c in turn["calls"]]
        message["tool_results"] = [tool_result(c) for c in turn["calls"]]
    if audio is not None:
        message["audio"] = audio
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(turn), "logprobs": None}],
            "speechlm": speechlm_extra(turn)}


def chat_chunk(cid: str, created: int, model_id: str, delta: dict, finish: str | None = None,
               extra: dict | None = None) -> dict:
    """One ``chat.completion.chunk`` of a streamed reply."""
    out = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
    if extra is not None:
        out["speechlm"] = extra
    return out


def sse(obj: Any) -> bytes:
    """One server-sent event carrying ``obj`` as JSON (``[DONE]`` as is)."""
    data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


def transcription(text: str, fmt: str, duration: float, language: str = "en") -> dict | str:
    """The transcription response in ``json`` / ``text`` / ``verbose_json`` form."""
    if fmt == "text":
        return text + "\n"
    if fmt == "verbose_json":
        return {"task": "transcribe", "language": language, "duration": round(duration, 3), "text": text,
                "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": round(duration, 3), "text": text,
                              "tokens": [], "temperature": 0.0}],
                "usage": {"type": "duration", "seconds": round(duration, 3)}}
    return {"text": text, "usage": {"type": "duration", "seconds": round(duration, 3)}}


TRANSCRIPTION_FORMATS = ("json", "text", "verbose_json")
SPEECH_FORMATS = ("wav", "pcm")

"""The OpenAI-compatible server against the real ``openai`` client: a uvicorn server on a free
localhost port serves a tiny model dir (Codec 2, characters, espeak-ng phones) trained for
seconds on two agent episodes, so the agent really calls a tool; its TTS and ASR are untrained,
so their outputs are compared with what ``speechlm.load`` gives for the same input."""
from __future__ import annotations

import base64
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from conftest import synth
from test_agent_loop import (
    CHARS,
    REQUESTS,
    reference,
    reference_examples,
    write_request_episodes,
)
from test_model_helpers import packed_model_dir, train

import speechlm
from speechlm.agent.episodes import read_episodes
from speechlm.models import SpeechLM
from speechlm.serve.app import Limits, create_app
from speechlm.serve.audio_io import pcm16

TASKS = ("spoken_dialogue", "command", "asr", "spoken_dialogue_monologue", "plain_tts", "tts")
KEY = "sk-test-123"
DECODE = {"search": "greedy", "max_len": 80, "tasks": {"plain_tts": {"min_len": 12, "max_len": 40},
                                                        "tts": {"min_len": 12, "max_len": 40}}}


def serve_model_dir(root: Path, model: SpeechLM | None = None, decode: dict | None = None) -> Path:
    """A packed model dir with the agent tasks, ASR and both TTS tasks, and one named voice."""
    (root / "voices").mkdir(parents=True, exist_ok=True)
    synth(root / "voices" / "alice.wav", "hello there", voice="en+f2")
    return packed_model_dir(root, TASKS, CHARS, decode=decode or DECODE, model=model, prefix_lm=True)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """The trained model dir and the episodes' wavs (the agent calls the tool of each request)."""
    from speechlm.data.batch import collate

    base = tmp_path_factory.mktemp("serve")
    (base / "episodes").mkdir()
    episodes = write_request_episodes(base / "episodes")
    pipe = speechlm.load(serve_model_dir(base / "untrained"))
    eps = read_episodes(episodes)
    batch = collate(reference_examples(pipe, eps, episodes.parent), pipe.vocab.pad_id)
    losses = train(pipe.model, batch, steps=100, lr=5e-3)
    assert losses[-1] < 0.05, losses[-1]
    return {"dir": serve_model_dir(base / "model", pipe.model), "wavs": episodes.parent, "base": base}


def free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


class Server:
    """uvicorn serving ``app`` in a thread on a free localhost port."""

    def __init__(self, app) -> None:
        sock = free_socket()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60  # a hang guard, not a timing assertion
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(served):
    app = create_app(served["dir"], api_key=KEY, max_batch=4,
                     limits=Limits(max_request_bytes=2**20, max_audio_s=8.0))
    srv = Server(app)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def ref(served):
    """The same model dir loaded in-process: what the server's answers must equal."""
    return speechlm.load(served["dir"])


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def audio_part(path: Path) -> dict:
    return {"type": "input_audio", "input_audio": {"data": base64.b64encode(path.read_bytes()).decode(), "format": "wav"}}


def wav_of(seconds: float, sr: int = 8000) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(int(seconds * sr), np.float32), sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


# ---- info, auth, errors --------------------------------------------------------------------------------
def test_health_models_tools_and_api_key(server, client, served):
    h = httpx.get(server.url + "/health")  # no key needed
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["agent"] is True
    for headers, why in (({}, "missing API key"), ({"Authorization": "Bearer wrong"}, "invalid API key")):
        r = httpx.get(server.url + "/v1/models", headers=headers)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert why in r.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()

    models = client.models.list().data
    assert [m.id for m in models] == [served["dir"].name] and models[0].object == "model"
    extra = models[0].model_extra["speechlm"]
    assert extra["voices"] == ["default", "alice"] and set(TASKS) <= set(extra["tasks"])
    tools = httpx.get(server.url + "/v1/tools", headers=auth()).json()["data"]
    lights = next(t["function"] for t in tools if t["function"]["name"] == "lights")
    assert tools[0]["type"] == "function" and lights["parameters"]["properties"]["action"]["type"] == "string"

    r = httpx.get(server.url + "/v1/nothing", headers=auth())
    assert r.status_code == 404 and "no endpoint" in r.json()["error"]["message"]


def test_malformed_and_oversized_requests_get_json_errors(server):
    url = server.url + "/v1"
    r = httpx.post(url + "/chat/completions", content=b"{not json", headers=auth())
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(url + "/chat/completions", json={"model": "m"}, headers=auth())
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = httpx.post(url + "/chat/completions", json={"messages": [{"role": "assistant", "content": "hi"}]}, headers=auth())
    assert r.status_code == 400 and "user's new turn" in r.json()["error"]["message"]
    bad = {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "%%%"}}]}]}
    r = httpx.post(url + "/chat/completions", json=bad, headers=auth())
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]
    # larger than --max-request-mb: refused from Content-Length, and while reading a chunked body
    r = httpx.post(url + "/audio/transcriptions", files={"file": ("big.wav", b"\0" * (2**20 + 10))}, headers=auth())
    assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"
    r = httpx.post(url + "/chat/completions", content=iter([b"x" * 2**19] * 3), headers=auth())
    assert r.status_code == 413
    r = httpx.post(url + "/audio/speech", json={"input": "x" * 5000, "voice": "default"}, headers=auth())
    assert r.status_code == 413


# ---- transcriptions ------------------------------------------------------------------------------------
def test_transcriptions_in_three_formats_equal_the_pipeline(client, served, ref):
    wav_path = served["wavs"] / "ep-lights.wav"
    wav, sr = sf.read(str(wav_path), dtype="float32")
    expected = ref.asr(wav, sample_rate=sr)
    with open(wav_path, "rb") as f:
        t = client.audio.transcriptions.create(model="m", file=f, response_format="json")
    assert t.text == expected
    with open(wav_path, "rb") as f:
        assert client.audio.transcriptions.create(model="m", file=f, response_format="text").strip() == expected.strip()
    with open(wav_path, "rb") as f:
        v = client.audio.transcriptions.create(model="m", file=f, response_format="verbose_json")
    assert v.text == expected and v.duration == pytest.approx(len(wav) / sr, abs=1e-3)
    assert v.segments[0].end == pytest.approx(v.duration)


def test_transcription_errors(client):
    with pytest.raises(openai.BadRequestError, match="could not read the audio"):
        client.audio.transcriptions.create(model="m", file=("x.wav", b"RIFF garbage, not audio" * 10))
    with pytest.raises(openai.APIStatusError, match="at most 8 s") as e:
        client.audio.transcriptions.create(model="m", file=("long.wav", wav_of(9.0)))
    assert e.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.transcriptions.create(model="m", file=("s.wav", wav_of(0.5)), response_format="srt")


# ---- speech --------------------------------------------------------------------------------------------
def read_wav(data: bytes) -> tuple[np.ndarray, int]:
    wav, sr = sf.read(io.BytesIO(data), dtype="float32")
    return wav, sr


def frame_db(wav: np.ndarray) -> np.ndarray:
    n = len(wav) // 160 * 160
    return 10 * np.log10((np.asarray(wav[:n], np.float64).reshape(-1, 160) ** 2).mean(1) + 1e-8)


def assert_same_speech(got: np.ndarray, expected: np.ndarray) -> None:
    """The same Codec 2 tokens: Codec 2 gives unvoiced harmonics random phases, so two decodes of
    one token sequence differ sample by sample but not in length or energy contour (measured:
    below 1 dB apart per 20 ms frame on average; another text of this model: over 4 dB)."""
    expected = np.frombuffer(pcm16(expected), "<i2").astype(np.float32) / 32768.0
    assert len(got) == len(expected)
    assert np.abs(frame_db(got) - frame_db(expected)).mean() < 2.0


def test_speech_is_streamed_and_equals_the_pipeline(client, server, served, ref):
    text = "turn on the lights"
    with client.audio.speech.with_streaming_response.create(model="m", voice="default", input=text,
                                                            response_format="wav") as r:
        assert r.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.headers
        assert r.headers["x-speechlm-task"] == "plain_tts"
        data = b"".join(r.iter_bytes())
    wav, sr = read_wav(data)
    expected, esr = ref.tts(text, task="plain_tts")
    assert sr == esr == 8000 and len(wav) >= 12 * 160  # min_len frames of Codec 2
    assert_same_speech(wav, expected)
    # raw PCM: the same samples without the header
    pcm = client.audio.speech.create(model="m", voice="default", input=text, response_format="pcm").read()
    assert len(pcm) == len(data) - 44 and data[:4] == b"RIFF" and pcm[:4] != b"RIFF"
    assert_same_speech(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, expected)

    # a named voice of the model dir (voices/alice.wav) and an uploaded one take the prompted task
    prompt = served["dir"] / "voices" / "alice.wav"
    with client.audio.speech.with_streaming_response.create(model="m", voice="alice", input=text) as r:
        assert r.headers["x-speechlm-task"] == "tts"
        named = read_wav(b"".join(r.iter_bytes()))[0]
    assert_same_speech(named, ref.tts(text, speaker_prompt=str(prompt))[0])
    url = "data:audio/wav;base64," + base64.b64encode(prompt.read_bytes()).decode()
    uploaded = read_wav(client.audio.speech.create(model="m", voice=url, input=text).read())[0]
    pw, psr = sf.read(str(prompt), dtype="float32")
    assert_same_speech(uploaded, ref.tts(text, speaker_prompt=(pw, psr))[0])


def test_speech_errors(client):
    with pytest.raises(openai.BadRequestError, match="unknown voice 'alloy'.*default, alice"):
        client.audio.speech.create(model="m", voice="alloy", input="hello")
    with pytest.raises(openai.BadRequestError, match="response_format"):
        client.audio.speech.create(model="m", voice="default", input="hello", response_format="mp3")
    with pytest.raises(openai.BadRequestError, match="gives no phone tokens"):
        client.audio.speech.create(model="m", voice="default", input="?!")
    with pytest.raises(openai.BadRequestError, match="speed"):
        client.audio.speech.create(model="m", voice="default", input="hello", speed=0)


def test_a_client_that_leaves_mid_stream_frees_its_slot(served, tmp_path):
    """One stream at a time, a 60 s utterance: the client reads the header and the first audio and
    hangs up; the server stops decoding (counted as cancelled, not completed: so that audio left
    before the utterance was finished) and the slot is free again."""
    long_dir = tmp_path / "long"
    shutil.copytree(served["dir"], long_dir)
    (long_dir / "decode.yaml").write_text(yaml.safe_dump(
        {**DECODE, "tasks": {"plain_tts": {"min_len": 3000, "max_len": 3000}}}))
    srv = Server(create_app(long_dir, limits=Limits(max_streams=1)))
    try:
        with httpx.stream("POST", srv.url + "/v1/audio/speech", json={"input": "hello", "voice": "default"},
                          timeout=60) as r:
            assert r.status_code == 200
            got = b""
            for piece in r.iter_bytes():  # the header, then audio of the first frames
                got += piece
                if len(got) > 44 + 2 * 160:
                    break
            assert len(got) > 44 + 2 * 160  # audio arrived while the 60 s utterance was still being made
        deadline = time.monotonic() + 60  # hang guard
        while (h := httpx.get(srv.url + "/health").json())["active_streams"]:
            assert time.monotonic() < deadline, "the stream was never released"
            time.sleep(0.05)
        assert h["streams"] == {"cancelled": 1}
    finally:
        srv.close()


# ---- the voice agent -----------------------------------------------------------------------------------
def expected_turn(ep_id: str) -> tuple[dict, str, dict]:
    _, request, intent, slots, answer = next(r for r in REQUESTS if r[0] == ep_id)
    call, _, state = reference(ep_id, request, intent, slots, answer)
    return call, answer, state


def test_chat_with_audio_calls_the_tool_and_keeps_the_session_state(client, server, served):
    call, answer, state = expected_turn("ep-lights")
    resp = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [audio_part(served["wavs"] / "ep-lights.wav")]}],
        extra_headers={"X-Session-Id": "kitchen-1"})
    msg = resp.choices[0].message
    assert resp.object == "chat.completion" and resp.choices[0].finish_reason == "stop"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == [(call["name"], call["args"])]
    assert msg.content == answer
    result = msg.model_extra["tool_results"][0]
    assert result["tool_call_id"] == msg.tool_calls[0].id and result["ok"] and result["content"].startswith("ok:")
    extra = resp.model_extra["speechlm"]
    assert extra["session_id"] == "kitchen-1" and extra["ended"] == "answer" and extra["state"] == state

    # the session keeps its environment; another session starts from the initial one
    kept = httpx.get(server.url + "/v1/sessions/kitchen-1", headers=auth()).json()
    assert kept["state"] == state and kept["turns"] == 1 and kept["history"][0]["text"].startswith("call lights")
    other = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [audio_part(served["wavs"] / "ep-alarm.wav")]}], user="alarm-1")
    assert other.model_extra["speechlm"]["session_id"] == "alarm-1"
    assert httpx.get(server.url + "/v1/sessions/alarm-1", headers=auth()).json()["state"] != state
    # a second request in a session whose first one was carried out: a new dialogue in the same home
    alarm_call, _, _ = expected_turn("ep-alarm")
    second = client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": [audio_part(served["wavs"] / "ep-alarm.wav")]}],
        extra_headers={"X-Session-Id": "kitchen-1"})
    assert [(c.function.name, json.loads(c.function.arguments)) for c in second.choices[0].message.tool_calls] == [
        (alarm_call["name"], alarm_call["args"])]
    both = httpx.get(server.url + "/v1/sessions/kitchen-1", headers=auth()).json()
    assert both["turns"] == 2 and both["history"][0]["text"].startswith("call alarm")  # what the model reads now
    assert both["state"]["devices"] == state["devices"] and both["state"] != state  # the lights stay off
    assert httpx.delete(server.url + "/v1/sessions/kitchen-1", headers=auth()).json()["deleted"] is True
    assert httpx.get(server.url + "/v1/sessions/kitchen-1", headers=auth()).status_code == 404


def test_chat_stream_sends_the_tool_call_then_the_answer(client, served):
    call, answer, state = expected_turn("ep-alarm")
    chunks = list(client.chat.completions.create(
        model="m", stream=True, messages=[{"role": "user", "content": [audio_part(served["wavs"] / "ep-alarm.wav")]}],
        extra_headers={"X-Session-Id": "stream-1"}))
    assert all(c.object == "chat.completion.chunk" for c in chunks) and chunks[0].choices[0].delta.role == "assistant"
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [(call["name"], call["args"])]
    results = [c.model_extra["speechlm"] for c in chunks if (c.model_extra or {}).get("speechlm", {}).get("type") == "tool_result"]
    assert results[0]["tool_call_id"] == calls[0].id and results[0]["ok"]
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == answer
    # the tool call comes before the answer; the last chunk ends the turn and carries the state
    first_call = next(i for i, c in enumerate(chunks) if c.choices[0].delta.tool_calls)
    first_text = next(i for i, c in enumerate(chunks) if c.choices[0].delta.content)
    assert first_call < first_text
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].model_extra["speechlm"]["state"] == state


def test_chat_speaks_the_answer_when_asked(client, served, ref):
    """``modalities: ["text", "audio"]``: the answer also as speech (the model's plain_tts), whole
    (wav, base64) or, streamed, as PCM16 chunks after the text."""
    _, answer, _ = expected_turn("ep-lights")
    turn = [{"role": "user", "content": [audio_part(served["wavs"] / "ep-lights.wav")]}]
    resp = client.chat.completions.create(model="m", messages=turn, modalities=["text", "audio"],
                                          audio={"voice": "default", "format": "wav"})
    audio = resp.choices[0].message.audio
    assert resp.choices[0].message.content == answer and audio.transcript == answer
    wav, sr = read_wav(base64.b64decode(audio.data))
    assert sr == ref.sample_rate_of("plain_tts")
    assert_same_speech(wav, ref.tts(answer, task="plain_tts")[0])

    chunks = list(client.chat.completions.create(model="m", messages=turn, stream=True, modalities=["text", "audio"],
                                                 audio={"voice": "default", "format": "pcm16"}))
    deltas = [c.choices[0].delta.audio for c in chunks if c.choices[0].delta.audio is not None]
    pcm = b"".join(base64.b64decode(d.data) for d in deltas if d.data)
    assert [d.transcript for d in deltas if d.transcript] == [answer] and deltas[-1].expires_at > time.time()
    assert len({d.id for d in deltas}) == 1
    assert_same_speech(np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0, ref.tts(answer, task="plain_tts")[0])
    with pytest.raises(openai.BadRequestError, match="pcm16 with stream"):
        client.chat.completions.create(model="m", messages=turn, stream=True, modalities=["text", "audio"],
                                       audio={"voice": "default", "format": "wav"})


def test_chat_typed_text_and_bad_audio(client, server):
    # typed words reach the e2e model as espeak-ng speech; the reply has the chat shape
    resp = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "turn off the kitchen lights"}])
    sid = resp.model_extra["speechlm"]["session_id"]
    assert sid.startswith("s-") and resp.model_extra["speechlm"]["ended"] in ("answer", "invalid", "max_turns")
    garbage = base64.b64encode(b"definitely not a wav file" * 20).decode()
    with pytest.raises(openai.BadRequestError, match="could not read the audio"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": garbage, "format": "wav"}}]}])
    with pytest.raises(openai.BadRequestError, match="session id"):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                       extra_headers={"X-Session-Id": "bad id!"})


@pytest.mark.parametrize("mode", ["cascade", "text"])
def test_cascade_and_text_agents_report_what_they_heard(served, ref, mode):
    """The cascade transcribes the turn with the model's ASR (through the scheduler) and typed text
    is its transcript as is; text mode refuses audio. (In-process client: no port needed.)"""
    from fastapi.testclient import TestClient

    from speechlm.agent.loop import spoken_form

    with TestClient(create_app(served["dir"], agent_mode=mode, realtime=False)) as tc:
        typed = tc.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Wake me at 7 am"}]})
        assert typed.status_code == 200 and typed.json()["speechlm"]["transcript"] == "wake me at seven am"
        wav_path = served["wavs"] / "ep-alarm.wav"
        spoken = tc.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [audio_part(wav_path)]}]})
        if mode == "text":
            assert spoken.status_code == 400 and "text mode" in spoken.json()["error"]["message"]
        else:
            wav, sr = sf.read(str(wav_path), dtype="float32")
            heard = spoken.json()["speechlm"]["transcript"]
            assert spoken.status_code == 200 and heard == spoken_form(ref.asr(wav, sample_rate=sr))


def test_a_model_with_the_monologue_task_alone_serves_it(served, tmp_path):
    """The voice_agent recipe packs spoken_dialogue_monologue without spoken_dialogue: the agent uses it."""
    mono = tmp_path / "mono"
    shutil.copytree(served["dir"], mono)
    (mono / "tasks" / "spoken_dialogue.yaml").unlink()
    app = create_app(mono, realtime=False)
    assert app.state.speechlm.agent.task == "spoken_dialogue_monologue" and app.state.speechlm.agent.loop.monologue
    app.state.speechlm.close()


def test_a_model_with_a_prompted_tts_alone_speaks_its_voice_by_default(served, tmp_path):
    """The mini recipe packs tts_phones (prompted) and its voice: voice "default" is that task with
    the model dir's voice, and it speaks as the named voice does."""
    from fastapi.testclient import TestClient

    one = tmp_path / "one"
    shutil.copytree(served["dir"], one)
    (one / "tasks" / "plain_tts.yaml").unlink()
    with TestClient(create_app(one, realtime=False)) as tc:
        got = {}
        for voice in ("default", "alice"):
            r = tc.post("/v1/audio/speech", json={"model": "m", "voice": voice, "input": "hello"})
            assert r.status_code == 200, r.text
            got[voice] = (r.headers["X-Speechlm-Task"], len(r.content))
        assert got["default"] == got["alice"] and got["default"][0] == "tts"
        assert "default" in tc.get("/v1/models").json()["data"][0]["speechlm"]["voices"]


# ---- the command ---------------------------------------------------------------------------------------
def test_speechlm_serve_command_binds_localhost_with_a_key(served):
    sock = free_socket()
    port = sock.getsockname()[1]
    sock.close()
    proc = subprocess.Popen([sys.executable, "-m", "speechlm", "serve", "--model-dir", str(served["dir"]),
                             "--port", str(port), "--api-key", KEY, "--threads", "1", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120  # hang guard: loading the model takes a few seconds
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "speechlm serve did not come up"
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        assert httpx.get(url + "/v1/models").status_code == 401
        assert httpx.get(url + "/v1/models", headers=auth()).json()["data"][0]["id"] == served["dir"].name
    finally:
        proc.terminate()
        proc.wait(30)
        proc.stdout.close()

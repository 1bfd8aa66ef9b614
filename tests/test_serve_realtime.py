"""Live audio over the WebSocket /v1/realtime: the voice-activity detector cuts a real spoken
request (espeak-ng) out of a stream, and a uvicorn server on localhost with a tiny agent model
(trained for seconds on the requests, see agent_model_dir) answers it with the tool call, the
answer, the session's new environment state and the spoken answer as audio chunks."""
from __future__ import annotations

import base64
import contextlib
import json
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from speechlm.serve.realtime import SAMPLE_RATE, Segmenter, VadConfig, espeak_chunks, utterance_audio
from conftest import synth
from test_agent_loop import REQUESTS, make_model_dir, reference, reference_examples
from test_model_helpers import train

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
ws_client = pytest.importorskip("websockets.sync.client")


# ---- helpers (the browser test uses them too) -----------------------------------------------------
def request_pcm(wav: Path, lead_s: float = 0.6, tail_s: float = 1.2) -> bytes:
    """A wav as the client sends it: 16 kHz PCM16 with silence before and after the words."""
    from speechlm.data.audio import load_audio

    x = load_audio(str(wav), SAMPLE_RATE)
    x = np.concatenate([np.zeros(int(lead_s * SAMPLE_RATE)), x, np.zeros(int(tail_s * SAMPLE_RATE))])
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


@contextlib.contextmanager
def running_server(app) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free localhost port in a thread; yields ``host:port``."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:  # startup loads nothing heavy: the app holds the loaded model already
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def until_done(ws, timeout: float = 300) -> list[dict]:
    """The events of one turn, up to and including ``done``."""
    events = []
    while True:
        ev = json.loads(ws.recv(timeout=timeout))
        events.append(ev)
        if ev["type"] == "done":
            return events


def audio_seconds(events: list[dict]) -> tuple[float, float]:
    """Duration and RMS of the audio events' PCM16."""
    chunks = [e for e in events if e["type"] == "audio"]
    if not chunks:
        return 0.0, 0.0
    sr = chunks[0]["sample_rate"]
    assert all(c["sample_rate"] == sr for c in chunks)
    pcm = np.frombuffer(b"".join(base64.b64decode(c["data"]) for c in chunks), dtype="<i2").astype(np.float32)
    return len(pcm) / sr, float(np.sqrt(np.mean((pcm / 32768) ** 2)))


def pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def as_from_a_browser(x16: np.ndarray) -> np.ndarray:
    """16 kHz audio as the demo page sends it: played at 48 kHz, box-filtered back to 16 kHz."""
    from speechlm.data.audio import resample

    x48 = resample(x16, SAMPLE_RATE, 48000)
    n = len(x48) // 3
    return x48[: 3 * n].reshape(n, 3).mean(axis=1).astype(np.float32)


def agent_model_dir(root: Path) -> Path:
    """A tiny e2e agent model trained for seconds (as test_agent_loop's) on the two spoken
    requests in the forms the server hands the agent: a streamed utterance as the detector and
    :func:`utterance_audio` cut it (as is, and after a browser's 48 kHz round trip), and typed
    words as the server speaks them."""
    import soundfile as sf

    import speechlm
    from speechlm.agent.episodes import Episode, read_episodes, write_episodes
    from speechlm.data.audio import load_audio
    from speechlm.data.batch import collate
    from speechlm.serve.audio_io import speak_words

    eps = []
    for ep_id, request, intent, slots, answer in REQUESTS:
        x16 = load_audio(str(synth(root / f"{ep_id}.wav", request)), SAMPLE_RATE)
        typed, typed_sr = speak_words(request)
        forms = {"ws": (utterance_audio(pcm16(x16)), SAMPLE_RATE),
                 "browser": (utterance_audio(pcm16(as_from_a_browser(x16))), SAMPLE_RATE), "typed": (typed, typed_sr)}
        call, ref, state = reference(ep_id, request, intent, slots, answer)
        for form, (wav, sr) in forms.items():
            sf.write(str(root / f"{ep_id}-{form}.wav"), wav, sr, subtype="PCM_16")
            eps.append(Episode(id=f"{ep_id}-{form}", turns=[{"text": request, "audio": f"{ep_id}-{form}.wav"}],
                               expected_calls=[call], expected_state=state, answer_facts=[answer.split()[-1]],
                               intent=intent, slots=slots, kind="atomic", split="test", meta={"reference": ref}))
    write_episodes(root / "episodes.jsonl", eps)
    pipe = speechlm.load(make_model_dir(root / "untrained"))
    batch = collate(reference_examples(pipe, read_episodes(root / "episodes.jsonl"), root), pipe.vocab.pad_id)
    losses = train(pipe.model, batch, steps=150, lr=5e-3)
    assert losses[-1] < 0.05, losses[-1]
    return make_model_dir(root / "model", pipe.model)


@pytest.fixture(scope="module")
def agent_dir(tmp_path_factory) -> Path:
    return agent_model_dir(tmp_path_factory.mktemp("realtime"))


@pytest.fixture(scope="module")
def request_wav(agent_dir) -> Path:
    return agent_dir.parent / "ep-lights.wav"  # "turn off the kitchen lights" (espeak-ng, 22.05 kHz)


@pytest.fixture(scope="module")
def server(agent_dir) -> Iterator[str]:
    from speechlm.serve.app import create_app

    with running_server(create_app(agent_dir)) as addr:
        yield addr


# ---- the voice-activity detector --------------------------------------------------------------------------
def test_segmenter_cuts_one_utterance_out_of_a_stream(request_wav):
    speech_s = len(request_pcm(request_wav, 0, 0)) / 2 / SAMPLE_RATE
    pcm = request_pcm(request_wav)
    seg = Segmenter(VadConfig(silence_ms=600))
    events = []
    for i in range(0, len(pcm), 3200):  # 100 ms pieces, not frame-aligned at the end
        events += seg.feed(pcm[i : i + 3200])
    assert [k for k, _ in events] == ["start", "end"]
    utt_s = len(events[1][1]) / 2 / SAMPLE_RATE
    # the words, with at most the pre-roll before and the kept tail after them
    assert speech_s - 0.3 < utt_s <= speech_s + 0.3 + 0.2 + 0.1, (utt_s, speech_s)
    assert not seg.in_speech

    # silence alone is no request; a short click is none either
    quiet = Segmenter()
    assert quiet.feed(bytes(SAMPLE_RATE * 2)) == []
    click = np.zeros(SAMPLE_RATE * 2, dtype="<i2")
    click[SAMPLE_RATE : SAMPLE_RATE + 80] = 20000
    assert all(k == "start" or u is None for k, u in quiet.feed(click.tobytes()))

    # vad off: everything is buffered until commit
    manual = Segmenter(vad=False)
    assert manual.feed(pcm) == []
    assert manual.commit() == pcm and manual.commit() is None


def test_espeak_answer_streams_in_chunks():
    chunks = list(espeak_chunks("the kitchen lights are off", chunk_s=0.1))
    assert len(chunks) > 5 and all(sr == chunks[0][1] for _, sr in chunks)
    pcm = np.frombuffer(b"".join(c for c, _ in chunks), dtype="<i2")
    assert 0.8 < len(pcm) / chunks[0][1] < 4.0 and np.abs(pcm).max() > 3000


def test_model_tts_answer_streams_the_models_audio(tmp_path):
    """A model with a prompt-free TTS task speaks the answer itself, chunk by chunk as decoded."""
    import speechlm
    from speechlm.infer import DecodeConfig
    from speechlm.serve.realtime import speech_chunks
    from test_stream import write_dir

    pipe = speechlm.load(write_dir(tmp_path / "tts"))
    cfg = DecodeConfig(min_len=24, max_len=24)  # untrained: a fixed length
    chunks = list(speech_chunks(pipe, "the kitchen lights are off", config=cfg))
    wav, sr = pipe.tts("the kitchen lights are off", config=cfg)
    assert len(chunks) > 1 and {r for _, r in chunks} == {sr}
    whole = (np.clip(np.asarray(wav, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    np.testing.assert_array_equal(np.frombuffer(b"".join(c for c, _ in chunks), dtype="<i2"), whole)


# ---- the WebSocket round trip ------------------------------------------------------------------------------
def test_spoken_request_over_websocket_gives_the_tool_call_and_spoken_answer(server, request_wav):
    with ws_client.connect(f"ws://{server}/v1/realtime") as ws:
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["sample_rate"] == SAMPLE_RATE and ready["session_id"]
        assert ready["state"]["devices"]["lights"]["kitchen"]["on"] is True  # a new session's initial state
        pcm = request_pcm(request_wav)
        for i in range(0, len(pcm), 3200):  # 100 ms frames, as a microphone would send them
            ws.send(pcm[i : i + 3200])
        events = until_done(ws)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["speech_started", "speech_stopped"], kinds
    assert "error" not in kinds, events
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [(c["name"], c["arguments"]) for c in calls] == [("lights", {"action": "off", "house_place": "kitchen"})]
    assert calls[0]["ok"] and calls[0]["result"].startswith("ok")
    assert [e["text"] for e in events if e["type"] == "answer"] == [REQUESTS[0][4]]
    state_ev = next(e for e in events if e["type"] == "state")
    assert state_ev["state"]["devices"]["lights"]["kitchen"]["on"] is False
    assert state_ev["changes"] == ["devices.lights.kitchen.on: true -> false"]
    # order: what was done, then the answer, then its speech, then done
    assert kinds.index("tool_call") < kinds.index("answer") < kinds.index("audio") < kinds.index("done")
    assert kinds[-1] == "done"
    seconds, rms = audio_seconds(events)
    assert seconds > 0.8 and rms > 0.01  # the answer spoken (espeak-ng: the model has no TTS task)

    # the session keeps its environment: a new connection with its id starts from the changed state
    with ws_client.connect(f"ws://{server}/v1/realtime?session_id={ready['session_id']}") as ws:
        again = json.loads(ws.recv(timeout=30))
        assert again["session_id"] == ready["session_id"]
        assert again["state"]["devices"]["lights"]["kitchen"]["on"] is False


def test_dropped_file_flow_and_typed_request(server, request_wav):
    """vad off + commit (the page's dropped wav); a typed request (a new session: the tiny model
    knows first requests only)."""
    with ws_client.connect(f"ws://{server}/v1/realtime") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "config", "vad": False, "speak": False}))
        ws.send(request_pcm(request_wav, 0.1, 0.1))
        ws.send(json.dumps({"type": "commit"}))
        events = until_done(ws)
        assert [e["type"] for e in events][0] == "speech_stopped"
        assert [c["name"] for c in events if c["type"] == "tool_call"] == ["lights"]
        assert not any(e["type"] == "audio" for e in events)  # speak: false

    with ws_client.connect(f"ws://{server}/v1/realtime") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "text", "text": "wake me up at seven am"}))
        events = until_done(ws)
    want = reference(*REQUESTS[1])[0]  # the alarm request's call
    calls = [e for e in events if e["type"] == "tool_call"]
    assert [{"name": c["name"], "args": c["arguments"]} for c in calls] == [want], events
    assert [e["text"] for e in events if e["type"] == "answer"] == [REQUESTS[1][4]]
    assert any(e["type"] == "audio" for e in events)


def test_concurrent_clients_are_each_answered(server, request_wav):
    """Three microphones at once: each connection gets its own session's call and answer."""
    from concurrent.futures import ThreadPoolExecutor

    pcm = request_pcm(request_wav)

    def client(_: int) -> tuple[str, list[dict]]:
        with ws_client.connect(f"ws://{server}/v1/realtime") as ws:
            sid = json.loads(ws.recv(timeout=30))["session_id"]
            ws.send(json.dumps({"type": "config", "speak": False}))
            for i in range(0, len(pcm), 3200):
                ws.send(pcm[i : i + 3200])
            return sid, until_done(ws)

    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(client, range(3)))
    assert len({sid for sid, _ in results}) == 3
    for _, events in results:
        assert [(e["name"], e["arguments"]) for e in events if e["type"] == "tool_call"] == [
            ("lights", {"action": "off", "house_place": "kitchen"})], events
        assert [e["text"] for e in events if e["type"] == "answer"] == [REQUESTS[0][4]]


def test_a_client_that_leaves_mid_turn_frees_its_session(agent_dir, request_wav):
    """Hanging up while the agent works: the turn stops (or ends), the session is free again and
    the server goes on serving."""
    from speechlm.serve.app import create_app

    app = create_app(agent_dir)
    with running_server(app) as addr:
        with ws_client.connect(f"ws://{addr}/v1/realtime?session_id=leaver") as ws:
            json.loads(ws.recv(timeout=30))
            ws.send(json.dumps({"type": "config", "vad": False}))
            ws.send(request_pcm(request_wav, 0.1, 0.1))
            ws.send(json.dumps({"type": "commit"}))
            assert json.loads(ws.recv(timeout=30))["type"] == "speech_stopped"
        # the connection is closed here, with the turn just started
        sess = app.state.speechlm.agent.sessions.get("leaver")
        deadline = time.monotonic() + 120
        while sess is None or sess.lock.locked() or sess.run is None or not sess.run.done:
            assert time.monotonic() < deadline, "the session stayed busy after its client left"
            time.sleep(0.05)
            sess = app.state.speechlm.agent.sessions.get("leaver")
        assert sess.run.ended in ("cancelled", "answer")
        with ws_client.connect(f"ws://{addr}/v1/realtime") as ws:
            json.loads(ws.recv(timeout=30))
            ws.send(json.dumps({"type": "config", "speak": False}))
            ws.send(json.dumps({"type": "text", "text": "wake me up at seven am"}))
            assert [e["name"] for e in until_done(ws) if e["type"] == "tool_call"] == ["alarm"]


def test_bad_messages_get_error_events_and_the_connection_stays(server):
    with ws_client.connect(f"ws://{server}/v1/realtime") as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        for bad, says in (("not json", "bad control message"), (json.dumps([1, 2]), "bad control message"),
                          (json.dumps({"type": "dance"}), "unknown message type"),
                          (json.dumps({"type": "config", "aggressiveness": 7}), "aggressiveness"),
                          (json.dumps({"type": "commit"}), "no speech"),
                          (json.dumps({"type": "text", "text": "  "}), "text"),
                          (json.dumps({"type": "text", "text": "x" * 5000}), "at most 4096"), (b"\x01\x02\x03", "even number")):
            ws.send(bad)
            ev = json.loads(ws.recv(timeout=30))
            assert ev["type"] == "error" and says in ev["message"], (bad, ev)
        ws.send(json.dumps({"type": "config", "speak": False}))  # still served after all that
        ws.send(json.dumps({"type": "text", "text": "wake me up at seven am"}))
        assert [e["type"] for e in until_done(ws)][-1] == "done"


def test_api_key_is_required_when_set(agent_dir):
    from websockets.exceptions import ConnectionClosed

    from speechlm.serve.app import create_app

    with running_server(create_app(agent_dir, api_key="sekrit")) as addr:
        for bad in ("", "?api_key=wrong", "?session_id=no%20spaces"):
            with ws_client.connect(f"ws://{addr}/v1/realtime{bad}" + ("&api_key=sekrit" if "session" in bad else "")) as ws:
                ev = json.loads(ws.recv(timeout=30))
                assert ev["type"] == "error" and ("API key" in ev["message"] or "session id" in ev["message"]), ev
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=30)
                assert ws.close_code == 1008
        with ws_client.connect(f"ws://{addr}/v1/realtime?api_key=sekrit") as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        with ws_client.connect(f"ws://{addr}/v1/realtime", additional_headers={"Authorization": "Bearer sekrit"}) as ws:
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"


def test_demo_page_and_its_files_are_served(server):
    import httpx

    page = httpx.get(f"http://{server}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for ref in ("/static/app.js", "/static/style.css"):
        assert ref in page.text
        assert httpx.get(f"http://{server}{ref}").status_code == 200
    js = httpx.get(f"http://{server}/static/app.js").text
    assert "/v1/realtime" in js and "/static/pcm-worklet.js" in js
    assert httpx.get(f"http://{server}/static/pcm-worklet.js").status_code == 200

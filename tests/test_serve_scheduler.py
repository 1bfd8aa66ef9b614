"""The batching scheduler of the server with a real tiny model dir (trained for a few seconds on
text-only agent steps, saved and reloaded through speechlm.load): concurrent submissions give
what one-by-one greedy decoding gives, batches really form, a bad request fails alone, a
cancelled request is dropped, and a bounded load (16 clients x 20 requests) ends with no error
and bounded memory growth."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

import pytest
from conftest import synth
from test_agent_loop import make_model_dir
from test_model_helpers import tiny_config, train

import speechlm
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer.config import DecodeConfig
from speechlm.models import SpeechLM
from speechlm.serve.scheduler import (
    BatchScheduler,
    QueueFull,
    RequestError,
    SchedulerClosed,
)

# (request, history, response) of the `command` task: what the tiny model learns
STEPS = [
    ("turn off the kitchen lights", "none", "call lights_off room=kitchen"),
    ("wake me up at seven am", "none", "call alarm_set time=seven am"),
    ("turn off the kitchen lights", "assistant: call lights_off room=kitchen | tool: ok", "say the lights are off"),
    ("wake me up at seven am", "assistant: call alarm_set time=seven am | tool: ok", "say alarm set for seven"),
    ("what time is it", "none", "call clock_time"),
    ("play some jazz", "none", "call music_play genre=jazz"),
]
# requests of different lengths, seen and unseen in training
REQUESTS = [{"request": r, "known": "none", "history": h} for r, h, _ in STEPS] + [
    {"request": "turn on the bedroom lamp please", "known": "house_place = bedroom", "history": "none"},
    {"request": "set a timer", "known": "none", "history": "user: hello | assistant: say hi there how can i help"},
]
CONTEXT = 320  # positions: small, so that a too-long input is cheap to make


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model dir whose model has learned the command steps (its outputs end with <eos>)."""
    root = tmp_path_factory.mktemp("sched")
    pipe = speechlm.load(make_model_dir(root / "untrained"))
    model = SpeechLM(tiny_config("delay", prefix_lm=True, max_len=CONTEXT), pipe.vocab)
    tpl = pipe.template("command")
    exs = []
    for i, (req, hist, resp) in enumerate(STEPS):
        segs = {"request": req, "known": "none", "history": hist, "response": resp}
        toks = {s.name: pipe.encode_value(s.tokenizer, segs[s.name]) for s in tpl.conditions + tpl.targets}
        exs.append(build_example(f"step{i}", tpl, toks, pipe.vocab, model.n_streams))
    losses = train(model, collate(exs, pipe.vocab.pad_id), steps=120, lr=5e-3)
    assert losses[-1] < 0.1, losses[-1]
    return make_model_dir(root / "model", model)


@pytest.fixture(scope="module")
def pipe(model_dir):
    return speechlm.load(model_dir)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("wavs")
    return [synth(root / f"u{i}.wav", text) for i, text in enumerate(["turn off the lights", "what time is it now"])]


def alone(pipe, task: str, inputs: dict, config=None) -> list[str]:
    """What decoding this request by itself gives (the Pipeline's one-input path)."""
    return [text for text, _ in pipe.generate_nbest(task, None, config, **inputs)]


def test_concurrent_submissions_equal_one_by_one_greedy(pipe, wavs):
    """Requests of two tasks and two decode configs, submitted together from threads and from
    a coroutine, each get exactly what greedy decoding of that request alone gives; requests of
    a different task or config do not share a batch."""
    short = DecodeConfig(search="greedy", max_len=12)
    jobs = [("command", r, None) for r in REQUESTS]
    jobs += [("command", r, short) for r in REQUESTS[:3]]
    jobs += [("asr", {"speech": str(w)}, None) for w in wavs]
    want = [alone(pipe, t, i, c) for t, i, c in jobs]
    assert len({w[0] for w in want[: len(REQUESTS)]}) > 3  # the model tells the requests apart
    assert all(len(w[0]) <= 12 for w in want[len(REQUESTS): len(REQUESTS) + 3])

    with BatchScheduler(pipe, max_batch=16, window_s=2.0) as sched:  # a long window: slow CI machines too
        futs = [sched.submit_future(t, i, c) for t, i, c in jobs]
        got = [f.result(timeout=120) for f in futs]
        stats = sched.stats()
    assert got == want
    assert stats["completed"] == len(jobs) and stats["failed"] == 0
    # one batch per (task, config): the long window gathered each group whole
    assert stats["batch_sizes"] == {2: 1, 3: 1, len(REQUESTS): 1}, stats

    async def from_coroutines(sched):
        return await asyncio.gather(*(sched.submit(t, i, c) for t, i, c in jobs))

    with BatchScheduler(pipe, max_batch=4, window_s=0.05) as sched:
        assert asyncio.run(from_coroutines(sched)) == want
        assert sched.stats()["max_batch_seen"] <= 4


def test_batches_form_and_max_batch_one_decodes_one_at_a_time(pipe):
    jobs = [REQUESTS[i % len(REQUESTS)] for i in range(8)]
    for max_batch in (16, 1):
        with BatchScheduler(pipe, max_batch=max_batch, window_s=0.05) as sched:
            def client(inputs, start, sched):
                start.wait()  # all at once
                return sched.submit_sync("command", inputs)

            n = len(jobs)
            with concurrent.futures.ThreadPoolExecutor(n) as ex:
                got = list(ex.map(client, jobs, [threading.Barrier(n)] * n, [sched] * n))
            s = sched.stats()
        assert got == [alone(pipe, "command", j) for j in jobs]
        assert s["completed"] == 8
        if max_batch == 1:
            assert s["batches"] == 8 and s["batch_sizes"] == {1: 8}
        else:
            assert s["mean_batch"] > 1 and s["batches"] < 8, s


def test_a_request_with_a_follower_obeys_it_in_a_shared_batch(pipe):
    """A request's own decoding rule (a SpanFollower: after ``=`` only the letters of ``bed``)
    holds for that request while its batch mate decodes freely, as it would alone."""
    import re

    from speechlm.infer.follow import SpanFollower

    tok = pipe.template("command").targets[0].tokenizer
    ids = lambda text: set(pipe.tokenizers[tok].encode(text).reshape(-1).tolist())  # noqa: E731
    rule = SpanFollower(tok, ids("="), ids(";"), ids("bed"))
    free = alone(pipe, "command", REQUESTS[0])
    assert free[0] == "call lights_off room=kitchen"
    with BatchScheduler(pipe, max_batch=4, window_s=2.0) as sched:
        futs = [sched.submit_future("command", REQUESTS[0], follower=rule), sched.submit_future("command", REQUESTS[0])]
        held, mate = (f.result(timeout=120) for f in futs)
        assert sched.stats()["batch_sizes"] == {2: 1}
        with pytest.raises(RequestError, match="greedy or sample"):
            sched.submit_future("command", REQUESTS[0], DecodeConfig(search="beam", beam_size=2), follower=rule)
    assert mate == free
    value = held[0].partition("=")[2]
    assert held[0].startswith("call lights_off room=") and re.fullmatch("[bed]*", value), held


def test_a_bad_request_fails_alone(pipe, wavs, tmp_path):
    """Unreadable audio, a shell pipe, an empty text, an input longer than the context and a
    missing input fail with a RequestError naming the request and the reason; their batch mates
    decode normally. An unknown task or a bad config is refused at submit."""
    bad_wav = tmp_path / "noise.wav"
    bad_wav.write_bytes(b"RIFF not really a wav")
    good = [("command", REQUESTS[0]), ("asr", {"speech": str(wavs[0])}), ("command", REQUESTS[4])]
    bad = {
        "unreadable": ("asr", {"speech": str(bad_wav)}),
        "missing file": ("asr", {"speech": str(tmp_path / "absent.wav")}),
        "pipe": ("asr", {"speech": f"cat {wavs[0]} |"}),
        "empty": ("command", {"request": "", "known": "none", "history": "none"}),
        "too long": ("command", {"request": "turn on the lights " * 40, "known": "none", "history": "none"}),
        "missing input": ("command", {"request": "hello"}),
    }
    with BatchScheduler(pipe, max_batch=16, window_s=0.3) as sched:
        futs = {name: sched.submit_future(t, i, request_id=f"bad-{name.replace(' ', '-')}") for name, (t, i) in bad.items()}
        good_futs = [sched.submit_future(t, i) for t, i in good]
        assert [f.result(timeout=120) for f in good_futs] == [alone(pipe, t, i) for t, i in good]
        for name, fut in futs.items():
            err = fut.exception(timeout=60)
            assert isinstance(err, RequestError), (name, err)
            assert f"bad-{name.replace(' ', '-')}" in str(err), str(err)
        assert "context" in str(futs["too long"].exception())
        assert "history" in str(futs["missing input"].exception())
        assert "no text_bpe tokens" in str(futs["empty"].exception())
        with pytest.raises(RequestError, match="not in this model"):
            sched.submit_future("translate", {"text": "hi"})
        with pytest.raises(RequestError, match="temperature"):
            sched.submit_future("command", REQUESTS[0], DecodeConfig(temperature=-1))
        s = sched.stats()
    assert s["failed"] == len(bad) and s["completed"] == len(good)


def test_cancelled_requests_are_dropped_and_free_their_slot(pipe):
    """Requests cancelled while they wait (a future cancelled, an awaiting task cancelled) do not
    take a row of the batch; closing without waiting fails what is queued."""
    with BatchScheduler(pipe, max_batch=16, window_s=1.0) as sched:
        futs = [sched.submit_future("command", REQUESTS[i % 6]) for i in range(6)]
        for f in futs[::2]:
            assert f.cancel()
        kept = [f.result(timeout=120) for f in futs[1::2]]
        s = sched.stats()
    assert kept == [alone(pipe, "command", REQUESTS[i]) for i in (1, 3, 5)]
    assert s["batch_sizes"] == {3: 1} and s["cancelled"] == 3, s

    async def cancel_one(sched):
        tasks = [asyncio.ensure_future(sched.submit("command", REQUESTS[i])) for i in range(4)]
        await asyncio.sleep(0.2)  # submitted and waiting for the window
        tasks[0].cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with BatchScheduler(pipe, max_batch=16, window_s=1.0) as sched:
        res = asyncio.run(cancel_one(sched))
        s = sched.stats()
    assert isinstance(res[0], asyncio.CancelledError)
    assert res[1:] == [alone(pipe, "command", REQUESTS[i]) for i in (1, 2, 3)]
    assert s["batch_sizes"] == {3: 1} and s["cancelled"] == 1, s

    sched = BatchScheduler(pipe, max_batch=16, window_s=30.0, max_queue=3)
    futs = [sched.submit_future("command", REQUESTS[i]) for i in range(3)]
    with pytest.raises(QueueFull):
        sched.submit_future("command", REQUESTS[3])
    sched.close(wait=False)
    assert all(isinstance(f.exception(timeout=60), SchedulerClosed) for f in futs)
    with pytest.raises(SchedulerClosed):
        sched.submit_future("command", REQUESTS[0])


def test_short_requests_are_answered_early_and_cancelled_rows_leave_the_batch(pipe):
    """In a batch of a long and a short request, the short one is answered while the long one
    still decodes (with what it gets alone); long requests cancelled at that moment leave the
    batch at the next step, so the batch ends far before their output length."""
    # output length = half the condition rows: a few tokens for the short request, ~70 for the long
    config = DecodeConfig(search="greedy", min_len_ratio=0.5, max_len_ratio=0.5, max_len=300)
    long_req = {"request": "turn on the lights " * 7, "known": "none", "history": "none"}
    short_req = {"request": "hi", "known": "none", "history": "none"}
    want_long = alone(pipe, "command", long_req, config)
    want_short = alone(pipe, "command", short_req, config)
    assert len(want_long[0]) > 60 and len(want_short[0]) < 10

    seen = {}
    # one encoder thread: the batch keeps the submission order, so the long request's answer
    # would come first if the short one waited for the batch to end
    with BatchScheduler(pipe, max_batch=16, window_s=2.0, encode_threads=1) as sched:
        long_fut = sched.submit_future("command", long_req, config)
        short_fut = sched.submit_future("command", short_req, config)
        short_fut.add_done_callback(lambda f: seen.setdefault("long done when short answered", long_fut.done()))
        assert short_fut.result(timeout=120) == want_short and long_fut.result(timeout=120) == want_long
    s = sched.stats()  # after close: the batch's step count is in
    assert seen == {"long done when short answered": False}
    assert s["batch_sizes"] == {2: 1} and s["steps"] > 60, s

    with BatchScheduler(pipe, max_batch=16, window_s=2.0) as sched:
        longs = [sched.submit_future("command", long_req, config) for _ in range(2)]
        short_fut = sched.submit_future("command", short_req, config)
        short_fut.add_done_callback(lambda f: [x.cancel() for x in longs])  # runs in the worker, mid-batch
        assert short_fut.result(timeout=120) == want_short
    s = sched.stats()
    assert all(x.cancelled() for x in longs)
    assert s["batch_sizes"] == {3: 1} and s["cancelled_decoding"] == 2 and s["steps"] < 10, s


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def test_load_16_clients_x_20_requests(pipe, wavs):
    """16 client threads x 20 requests (both tasks): no error, every answer right, batches
    formed, and memory after the load stays within a generous bound of memory after a warm-up."""
    jobs = [("command", r) for r in REQUESTS] + [("asr", {"speech": str(w)}) for w in wavs]
    want = {i: alone(pipe, t, inp) for i, (t, inp) in enumerate(jobs)}
    with BatchScheduler(pipe, max_batch=16, window_s=0.01) as sched:
        def client(c: int, n: int) -> list[tuple[int, list[str]]]:
            out = []
            for k in range(n):
                i = (c * 7 + k) % len(jobs)
                out.append((i, sched.submit_sync(*jobs[i], timeout=300)))
            return out

        def load(n: int) -> list:
            with concurrent.futures.ThreadPoolExecutor(16) as ex:
                return [r for rs in ex.map(client, range(16), [n] * 16) for r in rs]

        load(3)  # warm-up: allocator pools and caches reach their working size
        before = rss_mb()
        results = load(20)
        after = rss_mb()
        s = sched.stats()
    assert len(results) == 320 and all(got == want[i] for i, got in results)
    assert s["failed"] == 0 and s["completed"] == 16 * 23 and s["mean_batch"] > 2, s
    assert after - before < 300, (before, after)


def test_load_over_http_16_clients_x_20_transcriptions(pipe, wavs):
    """The same bounded load through the server (``create_app`` under uvicorn on localhost):
    16 clients x 20 transcriptions, no error, each answer what that file gets alone, batches
    formed, bounded memory growth."""
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from test_serve_api import Server

    from speechlm.serve.app import create_app

    server = Server(create_app(pipe, max_batch=16, window_s=0.01))
    try:
        files = [w.read_bytes() for w in wavs]

        def transcribe(http, i: int) -> str:
            r = http.post(f"{server.url}/v1/audio/transcriptions", data={"model": "speechlm"},
                          files={"file": (f"u{i}.wav", files[i], "audio/wav")}, timeout=300)
            assert r.status_code == 200, r.text
            return r.json()["text"]

        with httpx.Client() as http:
            want = [transcribe(http, i) for i in range(len(files))]  # one at a time: nothing to batch with

        def client(c: int, n: int) -> list[tuple[int, str]]:
            with httpx.Client() as http:
                return [((c + k) % len(files), transcribe(http, (c + k) % len(files))) for k in range(n)]

        def load(n: int) -> list:
            with concurrent.futures.ThreadPoolExecutor(16) as ex:
                return [r for rs in ex.map(client, range(16), [n] * 16) for r in rs]

        load(2)  # warm-up
        before = rss_mb()
        results = load(20)
        after = rss_mb()
        with httpx.Client() as http:
            stats = http.get(f"{server.url}/health").json()["scheduler"]
    finally:
        server.close()
    assert len(results) == 320 and all(text == want[i] for i, text in results)
    assert stats["failed"] == 0 and stats["completed"] == len(files) + 16 * 22 and stats["mean_batch"] > 2, stats
    assert after - before < 300, (before, after)

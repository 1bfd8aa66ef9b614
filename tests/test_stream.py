"""Streaming decoding (issue 16) with real tiny models packed into model dirs (Codec 2, espeak-ng
phones, a character tokenizer) and loaded by ``speechlm.load``: the streamed tokens are the whole
decode's for every stream strategy, the first block comes before decoding ends (except ar_nar,
whose NAR pass needs the whole AR pass), streamed Codec 2 audio is the whole decode's sample for
sample, streamed text joins to ``generate``'s text, and what cannot stream says so."""
from __future__ import annotations

import dataclasses
import gc
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import synth
from test_model_helpers import packed_model_dir, tiny_config, train

import speechlm
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig
from speechlm.infer.generate import sample_decode
from speechlm.infer.pipeline import InputError
from speechlm.infer.stream import ContextDecoder, StreamError, stream_tokens
from speechlm.models import SpeechLM
from speechlm.tokenizers.codec2 import Codec2Tokenizer

CHARS = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz'"]
TASKS = ("asr", "plain_tts", "tts")
STRATEGIES = ("delay", "parallel", "flat", "multiscale", "ar_nar")
FRAMES = 24  # forced TTS length (untrained models: min_len = max_len makes every run this long)
TTS_CFG = DecodeConfig(min_len=FRAMES, max_len=FRAMES)
TEXTS = {"turn on the kitchen lights": 0, "set a timer": 1}  # memorized ASR outputs, by speech seed


def write_dir(root: Path, model: SpeechLM | None = None, strategy: str = "delay") -> Path:
    """A model dir as `speechlm pack` writes it (an untrained ``strategy`` model unless given one)."""
    return packed_model_dir(root, TASKS, CHARS, model=model, strategy=strategy)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """``dirs(strategy)``: an untrained model dir of that strategy, made once per module."""
    made: dict[str, Path] = {}

    def get(strategy: str) -> Path:
        if strategy not in made:
            torch.manual_seed(0)
            made[strategy] = write_dir(tmp_path_factory.mktemp(f"stream-{strategy}") / "model", strategy=strategy)
        return made[strategy]
    return get


@pytest.fixture(scope="module")
def pipes(dirs):
    """``pipes(strategy)``: the loaded Pipeline of ``dirs(strategy)``."""
    made: dict = {}

    def get(strategy: str):
        if strategy not in made:
            made[strategy] = speechlm.load(dirs(strategy))
        return made[strategy]
    return get


def speech_tokens(seed: int) -> np.ndarray:
    """Codec 2 frames standing for a recording (ready condition tokens)."""
    sizes = Codec2Tokenizer().codebook_sizes
    return np.random.default_rng(seed).integers(0, sizes, (12, len(sizes))).astype(np.int32)


@pytest.fixture(scope="module")
def asr_dir(tmp_path_factory) -> Path:
    """A tiny delay model trained for seconds to write TEXTS[t] for speech_tokens(seed)."""
    root = tmp_path_factory.mktemp("asr") / "model"
    write_dir(root)  # an untrained model first: the tokenizers and templates to build the examples with
    pipe = speechlm.load(root)
    tpl, vocab = pipe.template("asr"), pipe.vocab
    exs = [build_example(f"u{s}", tpl, {"speech": speech_tokens(s), "text": pipe.tokenizers["text_bpe"].encode(t)},
                         vocab, pipe.model.n_streams) for t, s in TEXTS.items()]
    torch.manual_seed(0)
    model = SpeechLM(tiny_config("delay"), vocab)
    train(model, collate(exs, vocab.pad_id), 120, lr=1e-2)
    return write_dir(root, model)


def whole_tokens(pipe, task: str, inputs: dict, cfg: DecodeConfig) -> np.ndarray:
    """What Pipeline.generate decodes (local tokens of the best hypothesis)."""
    tpl = pipe.template(task)
    return pipe.generate_outputs(task, [pipe.condition_tokens(tpl, inputs)], cfg)[0][0].tokens


def stream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("speechlm-stream")]


def wait_no_stream_threads(limit_s: float = 20.0) -> bool:
    end = time.monotonic() + limit_s
    while stream_threads() and time.monotonic() < end:
        gc.collect()
        time.sleep(0.05)
    return not stream_threads()


# ---- the step hook ----------------------------------------------------------------------------
def test_on_step_is_called_once_per_step_and_changes_nothing(pipes):
    """Delay pattern, 8 Codec 2 streams, length forced to FRAMES: FRAMES frame steps, the end token's
    step, then 6 tail steps finish the delayed streams; the hook sees every one and the tokens do
    not change."""
    pipe = pipes("delay")
    tpl = pipe.template("plain_tts")
    ex = pipe.prompt_example(tpl, pipe.condition_tokens(tpl, {"phones": "hello there"}))
    prompts = collate([ex, ex], pipe.vocab.pad_id)
    calls = []
    with_hook = sample_decode(pipe.model, prompts, TTS_CFG, on_step=lambda a, st: calls.append(list(a)))
    plain = sample_decode(pipe.model, prompts, TTS_CFG)
    assert len(calls) == FRAMES + 1 + (8 - 2)
    assert all(a == [0, 1] for a in calls)
    for h1, h2 in zip(with_hook, plain):
        assert np.array_equal(h1[0].frames(8), h2[0].frames(8))


# ---- tokens, every strategy ------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_streamed_tokens_are_the_whole_decode(strategy, pipes):
    pipe = pipes(strategy)
    inputs = {"phones": "hello there"}
    s = stream_tokens(pipe, "plain_tts", inputs, TTS_CFG, chunk_frames=4)
    blocks, steps_at, finished_at = [], [], []
    for b in s:
        blocks.append(b)
        steps_at.append(s.steps)
        finished_at.append(s.finished)
    streamed = np.concatenate(blocks)
    whole = whole_tokens(pipe, "plain_tts", inputs, TTS_CFG)
    assert streamed.shape == (FRAMES, 8) and np.array_equal(streamed, whole)
    assert s.stopped is False  # the length limit ended it
    if strategy == "ar_nar":  # the NAR levels need the whole AR pass: every block comes at the end
        assert all(finished_at) and len(blocks) == FRAMES // 4
    else:
        assert len(blocks) >= FRAMES // 4 - 1
        assert steps_at[0] < s.steps, "the first block must come before decoding ends"
        assert not finished_at[0]


def test_sampled_stream_is_the_whole_sampled_decode(pipes):
    pipe = pipes("delay")
    cfg = DecodeConfig(search="sample", temperature=1.0, top_k=20, seed=7, min_len=FRAMES, max_len=FRAMES)
    streamed = np.concatenate(list(stream_tokens(pipe, "plain_tts", {"phones": "good morning"}, cfg, chunk_frames=5)))
    assert np.array_equal(streamed, whole_tokens(pipe, "plain_tts", {"phones": "good morning"}, cfg))
    # an n-best config streams what Pipeline.generate returns with it: one sample
    four = dataclasses.replace(cfg, nbest=4)
    again = np.concatenate(list(stream_tokens(pipe, "plain_tts", {"phones": "good morning"}, four, chunk_frames=5)))
    assert np.array_equal(again, streamed)


# ---- audio -----------------------------------------------------------------------------------
AUDIO_SCRIPT = """
import sys, numpy as np, speechlm
from speechlm.infer import DecodeConfig
pipe = speechlm.load(sys.argv[1])
cfg = DecodeConfig(min_len={n}, max_len={n})
if sys.argv[2] == "whole":
    wav, sr = pipe.tts("hello there", config=cfg)
    np.save(sys.argv[3], wav)
else:
    stream = pipe.tts_stream("hello there", config=cfg, chunk_frames=4)
    chunks = list(stream)
    assert stream.sample_rate == pipe.sample_rate_of("plain_tts") == 8000
    np.save(sys.argv[3], np.concatenate(chunks))
    np.save(sys.argv[3].replace(".npy", "_sizes.npy"), np.array([len(c) for c in chunks]))
"""


def test_tts_stream_audio_is_the_whole_decode_sample_for_sample(tmp_path, dirs):
    """libcodec2 draws unvoiced phases from a process-wide random generator, so two decodes in one
    process differ; each fresh process starts it alike, and with one decoder state fed the same
    frames in the same order the streamed chunks concatenated equal ``tts``'s waveform exactly."""
    script = tmp_path / "speak.py"
    script.write_text(AUDIO_SCRIPT.format(n=FRAMES))
    d = dirs("delay")
    for mode in ("whole", "stream"):
        subprocess.run([sys.executable, str(script), str(d), mode, str(tmp_path / f"{mode}.npy")], check=True,
                       cwd=Path(__file__).parent, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                       "PYTHONPATH": str(Path(__file__).parents[1])})
    whole, streamed = np.load(tmp_path / "whole.npy"), np.load(tmp_path / "stream.npy")
    sizes = np.load(tmp_path / "stream_sizes.npy")
    assert len(whole) == FRAMES * 160 and np.abs(whole).max() > 0
    assert np.array_equal(streamed, whole)
    # 4 frames a chunk; the decoder's 20 ms lag shortens the first and comes back as the last
    assert sizes.tolist() == [4 * 160 - 160] + [4 * 160] * (FRAMES // 4 - 1) + [160]


def test_tts_stream_in_process_matches_tts_frame_by_frame(pipes):
    """In one process the random unvoiced phases differ between decodes: same length, and the same
    per-frame loudness within Codec 2's phase noise."""
    pipe = pipes("delay")
    chunks = list(pipe.tts_stream("hello there", config=TTS_CFG, chunk_frames=4))
    wav, sr = pipe.tts("hello there", config=TTS_CFG)
    streamed = np.concatenate(chunks)
    assert sr == 8000 and streamed.dtype == np.float32 and len(streamed) == len(wav) == FRAMES * 160
    rms = lambda y: np.sqrt((y.reshape(-1, 160) ** 2).mean(1) + 1e-12)
    db = np.abs(20 * np.log10(rms(streamed) / rms(wav)))
    assert np.median(db) < 0.1 and np.percentile(db, 90) < 1.0, db


def test_tts_stream_with_a_speaker_prompt(tmp_path, pipes):
    pipe = pipes("parallel")
    ref = synth(tmp_path / "ref.wav", "this is my voice")
    stream = pipe.tts_stream("hello", speaker_prompt=str(ref), config=TTS_CFG, chunk_frames=6)
    chunks = list(stream)
    assert stream.tokens.task == "tts" and len(chunks) >= 3
    assert sum(map(len, chunks)) == len(pipe.tts("hello", speaker_prompt=str(ref), config=TTS_CFG)[0])


def test_codec2_stream_decoder_pieces_have_the_decode_lengths():
    tok = Codec2Tokenizer()
    codes = np.random.default_rng(0).integers(0, tok.codebook_sizes, (10, tok.n_streams)).astype(np.int32)
    dec = tok.stream_decoder()
    pieces = [dec.push(codes[a: a + 3]) for a in range(0, 10, 3)] + [dec.flush()]
    assert [len(p) for p in pieces] == [3 * 160 - 160, 480, 480, 160, 160]
    assert sum(map(len, pieces)) == len(tok.decode(codes))
    with pytest.raises(ValueError, match="expected tokens"):
        dec.push(codes[:, :3])


def test_context_decoder_for_codecs_without_a_stream_decoder(tmp_path):
    """The fallback decodes new frames after a few frames of left context and holds the last two
    back (Codec 2's plain decode lags a frame and ends in 20 ms of silence): same length as the
    whole decode, and on real speech nearly the same per-frame loudness (its phases restart, so not
    the same samples; without the lookahead every block would end in a silent frame)."""
    import soundfile as sf

    tok = Codec2Tokenizer()
    wav, sr = sf.read(synth(tmp_path / "s.wav", "the quick brown fox jumps over the lazy dog"), dtype="float32")
    codes = tok.encode(wav, sr)
    ref = tok.decode(codes)
    rms = lambda v: np.sqrt((v.reshape(-1, 160) ** 2).mean(1) + 1e-12)
    loud = rms(ref) > 0.01
    for lookahead, ok in ((2, True), (0, False)):
        dec = ContextDecoder(tok, context=4, lookahead=lookahead)
        pieces = [dec.push(codes[a: a + 8]) for a in range(0, len(codes), 8)] + [dec.flush()]
        y = np.concatenate(pieces)
        assert len(y) == len(ref) and len(pieces[0]) == (8 - lookahead) * 160
        db = np.abs(20 * np.log10(rms(y)[loud] / rms(ref)[loud]))
        assert loud.sum() > 50
        assert (np.median(db) < 1.0 and np.percentile(db, 90) < 3.0) == ok, (lookahead, db)


# ---- text ------------------------------------------------------------------------------------
def test_generate_stream_gives_words_that_join_to_generate(asr_dir):
    pipe = speechlm.load(asr_dir)
    cfg = DecodeConfig(max_len=40)
    for text, seed in TEXTS.items():
        inputs = {"speech": speech_tokens(seed)}
        whole = pipe.generate("asr", cfg, **inputs)
        assert whole == text  # the tiny model memorized it
        pieces = list(pipe.generate_stream("asr", cfg, **inputs))
        assert "".join(pieces) == whole
        words = text.split(" ")
        assert pieces == [words[0]] + [" " + w for w in words[1:]]


def test_text_stream_of_an_untrained_model_joins_to_generate(pipes):
    pipe = pipes("delay")
    cfg = DecodeConfig(min_len=30, max_len=30)
    inputs = {"speech": speech_tokens(3)}
    assert "".join(pipe.generate_stream("asr", cfg, **inputs)) == pipe.generate("asr", cfg, **inputs)


# ---- closing, errors -------------------------------------------------------------------------
def test_close_stops_decoding_and_frees_the_thread(pipes):
    pipe = pipes("delay")
    cfg = DecodeConfig(min_len=200, max_len=200)
    stream = pipe.tts_stream("hello there", config=cfg, chunk_frames=2)
    first = next(stream)
    assert len(first) > 0
    stream.close()
    steps = stream.tokens.steps
    assert steps < 200 and not stream.tokens.finished
    assert list(stream) == []
    assert wait_no_stream_threads()
    # an abandoned stream (no close) ends its thread too
    abandoned = pipe.tts_stream("hello there", config=cfg, chunk_frames=2)
    next(abandoned)
    del abandoned
    assert wait_no_stream_threads()


def test_close_from_another_thread_wakes_the_reader(pipes):
    """A server iterates in a worker thread and closes from its event loop when the client leaves:
    the reader blocked waiting for the next chunk must end, not hang."""
    pipe = pipes("delay")
    stream = pipe.tts_stream("hello there", config=DecodeConfig(min_len=400, max_len=400), chunk_frames=2)
    got, first = [], threading.Event()

    def read():
        for chunk in stream:
            got.append(chunk)
            first.set()
            time.sleep(0.01)

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(60)
    stream.close(wait=False)
    reader.join(60)
    assert not reader.is_alive() and 0 < len(got) < 200
    assert wait_no_stream_threads()


def test_what_cannot_stream_says_so(pipes):
    pipe = pipes("delay")
    with pytest.raises(StreamError, match="beam.*cannot stream"):
        pipe.generate_stream("asr", DecodeConfig(search="beam"), speech=speech_tokens(0))
    with pytest.raises(StreamError, match="audio, not text.*tts_stream"):
        pipe.generate_stream("plain_tts", TTS_CFG, phones="hello")
    with pytest.raises(StreamError, match="text, not audio.*generate_stream"):
        pipe.tts_stream("hello", task="asr")
    with pytest.raises(StreamError, match="chunk_frames"):
        pipe.tts_stream("hello", chunk_frames=0)
    with pytest.raises(InputError, match="give it something to say"):  # raised at the call, not at next()
        pipe.tts_stream("...")
    assert not stream_threads()

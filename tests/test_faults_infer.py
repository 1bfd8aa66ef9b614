"""Planted faults in decoding (issue 14): each test names its case and fails on the code before the fix.

Real parts only: tiny models saved as model dirs (Codec 2, a character tokenizer, espeak-ng phones)
and loaded by ``speechlm.load``; espeak-ng recordings; the ``speechlm decode`` command.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import speechlm
from speechlm.cli import main as cli
from speechlm.config import ConfigError
from speechlm.data.batch import collate
from speechlm.data.sequence import build_example
from speechlm.infer import DecodeConfig, generate_nbest
from speechlm.infer.pipeline import InputError, default_voice
from speechlm.models import SpeechLM
from speechlm.tasks import load_template
from conftest import synth
from test_model_helpers import packed_model_dir, tiny_config, toy_vocab

CHARS = ["<unk>", "<space>", *"abcdefghijklmnopqrstuvwxyz'"]
TASKS = ("asr", "plain_tts", "tts")
CONTEXT = 96  # the model's max_len: a 0.5 s word fits (codec 2: 50 frames/s), a 3 s sentence does not


# ---- shared setup -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """An untrained tiny model dir as `speechlm pack` writes it (outputs are garbage, which is fine:
    these tests are about what reaches the model and what comes back, not about accuracy)."""
    root = tmp_path_factory.mktemp("infer") / "model"
    return packed_model_dir(root, TASKS, CHARS, decode="search: greedy\nmax_len: 12\n", max_len=CONTEXT)


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("wavs")
    words = {"a1": "yes", "a2": "no", "a3": "stop", "b1": "go",
             "long": "please turn on all of the lights in the kitchen and the living room now"}
    return {u: synth(d / f"{u}.wav", w, voice="en-us" if u[0] != "b" else "en+f2") for u, w in words.items()}


def scp(path: Path, entries: dict[str, str]) -> Path:
    path.write_text("".join(f"{u} {v}\n" for u, v in entries.items()))
    return path


def decode(model_dir: Path, out: Path, *args: str) -> int:
    return cli(["decode", "--model-dir", str(model_dir), "--out-dir", str(out), *args])


def kaldi_file(path: Path) -> dict[str, str]:
    return dict(line.split(maxsplit=1) if " " in line else (line, "")
                for line in path.read_text().splitlines() if line.strip())


# ---- case 0 --------------------------------------------------------------------------------------
def asr_prompt(vocab, utt: str, frames: int, seed: int):
    speech = np.random.default_rng(seed).integers(0, 8, (frames, 2))
    return build_example(utt, load_template("asr"), {"speech": speech}, vocab, 2, with_targets=False)


def test_case0_batched_joint_beam_equals_one_by_one_with_short_inputs():
    """A 2-frame input leaves CTC no continuation after two tokens, so its prompt stops with fewer
    than beam_size live rows while the long prompts after it in the batch go on: each must keep
    reading its own rows (the old bookkeeping shifted them: wrong hypotheses or an IndexError)."""
    torch.manual_seed(0)
    vocab = toy_vocab(2)
    model = SpeechLM(tiny_config("delay", ctc_weight=0.5, ctc_tokenizer="text_bpe"), vocab).eval()
    prompts = [asr_prompt(vocab, "short1", 2, 0), asr_prompt(vocab, "long1", 14, 1),
               asr_prompt(vocab, "short2", 1, 2), asr_prompt(vocab, "long2", 12, 3), asr_prompt(vocab, "long3", 16, 4)]
    cfg = DecodeConfig(search="beam", beam_size=4, nbest=2, ctc_weight=0.5, max_len=8)
    batched = generate_nbest(model, collate(prompts), cfg)
    for p, hyps in zip(prompts, batched):
        alone = generate_nbest(model, collate([p]), cfg)[0]
        assert [h.frames(2).tolist() for h in hyps] == [h.frames(2).tolist() for h in alone], p.id
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-3), p.id
    # the CTC term bounds each hypothesis by its input: at most one token per frame here
    assert all(len(h.frames(2)) <= 2 for h in batched[0]) and all(len(h.frames(2)) <= 1 for h in batched[2])
    assert any(len(h[0].frames(2)) > 2 for h in batched[1::2]), "the long prompts should search beyond that"


# ---- case 6 --------------------------------------------------------------------------------------
def test_case6_guidance_prompt_is_the_training_dropout_sequence_and_beam_rejects_unused_options(tmp_path):
    """Training with condition_dropout and decoding with cfg_scale build the same unconditional
    sequence (<task> <seg:codec> <seg:phone> <seg:codec>, prefix 3 for TTS); beam and CTC-greedy
    search refuse cfg_scale / repetition_penalty instead of ignoring them."""
    from speechlm.data.dataset import DataSpec, MultiTaskData
    from speechlm.data.synthetic import make_dump, synthetic_vocab
    from speechlm.infer.context import unconditional

    dump = make_dump(tmp_path / "tts", "tts", 6, seed=0, n_speakers=2)
    tpl = yaml.safe_load((dump / "template.yaml").read_text())
    tpl["condition_dropout"] = 0.9
    (dump / "template.yaml").write_text(yaml.safe_dump(tpl))
    vocab = synthetic_vocab(["tts"])
    entry = MultiTaskData([DataSpec.parse(f"tts:t:{dump}")], vocab, n_streams=4).entries[0]
    template = entry.template
    checked = 0
    for i in range(len(entry)):
        for epoch in range(3):
            ex = entry.example(i, epoch)
            row = int(entry.rows[i])
            segs = {s.name: entry._prompt.prompt(row, s, epoch) if s.modality == "spk_prompt" else entry.tokens(row, s.name)
                    for s in template.conditions}
            prompt = build_example(entry.utt_id(i), template, segs, vocab, 4, with_targets=False)
            if len(ex) >= len(prompt):
                continue  # conditions kept in this epoch
            un = unconditional(collate([prompt], vocab.pad_id))
            n = int(un.lengths[0])
            assert n == 4 and int(un.prefix_lens[0]) == ex.prefix_len == 3
            np.testing.assert_array_equal(un.tokens[0, :n].numpy(), ex.tokens[:n])  # the same sequence
            np.testing.assert_array_equal(un.kinds[0, :n].numpy(), ex.kinds[:n])
            checked += 1
    assert checked >= 3, "condition_dropout 0.9 should drop the conditions of several examples"
    for search in ("beam", "ctc_greedy"):
        for key, value in (("cfg_scale", 2.0), ("repetition_penalty", 1.3)):
            with pytest.raises(ConfigError, match=f"{key}.*{search}"):
                DecodeConfig(search=search, **{key: value}).validate()
    DecodeConfig(search="sample", cfg_scale=2.0, repetition_penalty=1.3).validate()  # applied there


# ---- case 7 --------------------------------------------------------------------------------------
def test_case7_speaker_prompt_is_never_the_utterance_itself(model_dir, wavs, tmp_path):
    """Decoding takes a speaker prompt by the training rule (SpeakerPrompt: another utterance of the
    speaker, the same window for the same seed); a speaker with one utterance is listed in
    `failed` (not prompted with itself) and the others are decoded."""
    from speechlm.data.audio import load_audio
    from speechlm.data.manifest import prepare_manifest, read_manifest
    from speechlm.data.speaker_prompt import SpeakerPrompt
    from speechlm.infer.pipeline import Pipeline

    data = tmp_path / "data"
    data.mkdir()
    utts = ("a1", "a2", "a3", "b1")
    scp(data / "wav.scp", {u: str(wavs[u]) for u in utts})
    scp(data / "text", {"a1": "yes", "a2": "no", "a3": "stop", "b1": "go"})
    scp(data / "utt2spk", {u: u[0] for u in utts})
    scp(data / "spk2utt", {"a": "a1 a2 a3", "b": "b1"})
    prepare_manifest(load_template("tts"), data, tmp_path / "dump")
    out = tmp_path / "out"
    assert decode(model_dir, out, "--manifest-dir", str(tmp_path / "dump")) == 1
    failed = kaldi_file(out / "failed")
    assert list(failed) == ["b1"] and "no other utterance" in failed["b1"]
    assert sorted(kaldi_file(out / "wav.scp")) == ["a1", "a2", "a3"]
    # the prompt decoding used is the one training's SpeakerPrompt picks, never the target itself
    from speechlm.infer.runner import _condition_tokens, _speaker_prompts

    pipe = Pipeline.load(model_dir)
    template, rows = read_manifest(tmp_path / "dump")
    by_id = {r["id"]: r for r in rows}
    codec = pipe.tokenizers["codec"]
    tokens = {u: codec.encode(load_audio(str(wavs[u]), codec.sample_rate), codec.sample_rate) for u in utts}
    rule = SpeakerPrompt({u: u[0] for u in utts}, tokens.__getitem__, max_frames=150, seed=0)
    prompts = _speaker_prompts(pipe, template, by_id, seed=0)
    for u in ("a1", "a2", "a3"):
        used = _condition_tokens(pipe, template, by_id[u], prompts)["prompt"]
        assert rule.choose(u) != u
        np.testing.assert_array_equal(used, rule(u))
        assert not np.array_equal(used, tokens[u][: len(used)])


# ---- case 9 --------------------------------------------------------------------------------------
def test_case9_api_never_runs_pipes_unless_allowed(model_dir, wavs, tmp_path):
    marker = tmp_path / "ran"
    pipe_cmd = f"touch {marker}; cat {wavs['a1']} |"
    lm = speechlm.load(model_dir)
    with pytest.raises(OSError, match="allow_pipes"):
        lm.asr(pipe_cmd)
    with pytest.raises(OSError):
        lm.asr({"path": pipe_cmd, "start": 0.0, "end": 0.2})
    assert not marker.exists(), "the Python API ran a shell command"
    assert isinstance(speechlm.load(model_dir, allow_pipes=True).asr(pipe_cmd), str)
    assert marker.exists()
    marker.unlink()
    # recipe data (a wav.scp given to `speechlm decode`) keeps the Kaldi pipe convention
    out = tmp_path / "out"
    assert decode(model_dir, out, "--task", "asr", "--input", str(scp(tmp_path / "wav.scp", {"p1": pipe_cmd}))) == 0
    assert marker.exists() and list(kaldi_file(out / "text")) == ["p1"]


# ---- case 13 -------------------------------------------------------------------------------------
def test_case13_missing_wav_is_listed_and_the_rest_decoded(model_dir, wavs, tmp_path, caplog):
    out = tmp_path / "out"
    wav_scp = scp(tmp_path / "wav.scp", {"a1": wavs["a1"], "gone": tmp_path / "nowhere.wav", "a2": wavs["a2"]})
    with caplog.at_level(logging.ERROR):
        assert decode(model_dir, out, "--task", "asr", "--input", str(wav_scp)) == 1
    assert "1 of 3 utterances FAILED" in caplog.text
    failed = kaldi_file(out / "failed")
    assert list(failed) == ["gone"] and "not found" in failed["gone"]
    assert sorted(kaldi_file(out / "text")) == ["a1", "a2"]
    assert json.loads((out / "timing.json").read_text())["failed"] == 1
    # once the wav exists, the same command decodes only it and the output is complete
    shutil.copy(wavs["a3"], tmp_path / "nowhere.wav")
    assert decode(model_dir, out, "--task", "asr", "--input", str(wav_scp)) == 0
    assert (out / "failed").read_text() == "" and sorted(kaldi_file(out / "text")) == ["a1", "a2", "gone"]


# ---- case 16 -------------------------------------------------------------------------------------
@pytest.mark.parametrize("options, words", [
    ({"search": "greedy", "tasks": {"asrr": {"search": "beam"}}}, ["tasks.asrr", "did you mean 'asr'"]),
    ({"min_len": 50, "max_len": 10}, ["min_len 50", "max_len 10"]),
    ({"tasks": {"asr": {"beam_size": 0}}}, ["task asr", "beam_size"]),
    ({"tasks": {"asr": {"beamsize": 4}}}, ["tasks.asr", "'beamsize'", "did you mean 'beam_size'"]),
])
def test_case16_decode_yaml_errors_name_file_and_key(model_dir, wavs, tmp_path, caplog, options, words):
    conf = tmp_path / "my_decode.yaml"
    conf.write_text(yaml.safe_dump(options))
    wav_scp = scp(tmp_path / "wav.scp", {"a1": wavs["a1"]})
    with caplog.at_level(logging.ERROR):
        assert decode(model_dir, tmp_path / "out", "--task", "asr", "--input", str(wav_scp),
                      "--decode-config", str(conf)) == 1
    assert str(conf) in caplog.text, caplog.text
    for w in words:
        assert w in caplog.text, caplog.text
    assert not (tmp_path / "out" / "text").exists()


def test_decode_yaml_may_configure_tasks_the_model_lacks(model_dir, wavs, tmp_path, caplog):
    """A recipe's decode YAML configures the tasks of all its runs (the mini recipe's
    conf/decode_phones.yaml: tts_phones and tts_spoken_phones): decoding one task reads its entry
    and leaves the others alone; an entry of a name close to the decoded task's, and none of its
    own, is a typo (case 16)."""
    wav_scp = scp(tmp_path / "wav.scp", {"a1": wavs["a1"]})
    conf = tmp_path / "decode.yaml"
    conf.write_text("search: greedy\nmax_len: 5\ntasks:\n  tts_spoken_phones: {search: sample}\n"
                    "  asr_en: {max_len: 3}\n")  # a sibling task's entry, not a typo of asr
    assert decode(model_dir, tmp_path / "sib", "--task", "asr", "--input", str(wav_scp), "--decode-config", str(conf)) == 0
    conf.write_text("search: greedy\nmax_len: 5\ntasks:\n  tts_spoken_phones: {search: sample}\n"
                    "  asr: {max_len: 4}\n")
    assert decode(model_dir, tmp_path / "out", "--task", "asr", "--input", str(wav_scp), "--decode-config", str(conf)) == 0
    assert "max_len: 4" in (tmp_path / "out" / "decode.yaml").read_text()
    conf.write_text("tasks:\n  tts_spoken_phones: {search: sample}\n  asrr: {max_len: 4}\n")
    assert decode(model_dir, tmp_path / "bad", "--task", "asr", "--input", str(wav_scp), "--decode-config", str(conf)) == 1
    assert "tasks.asrr" in caplog.text and "did you mean 'asr'" in caplog.text


def test_tts_task_is_found_by_its_shape():
    """lm.tts, the server, the agent's speech and the model card's example use tts_task: tts /
    plain_tts first, else a text -> speech task of another name (the mini recipe's phone-led
    tts_phones)."""
    from speechlm.infer.pipeline import tts_task
    from speechlm.models.model_card import usage_lines
    from speechlm.tasks.template import load_template_file

    conf = Path(__file__).resolve().parent.parent / "egs" / "mini_espeak" / "speechlm1" / "conf" / "tasks"
    phones = load_template_file(conf / "tts_phones.yaml")
    tpls = lambda names: {n: phones if n == "tts_phones" else load_template(n) for n in names}
    assert tts_task(tpls(["asr", "tts", "plain_tts", "tts_phones"]), True) == "tts"
    assert tts_task(tpls(["asr", "tts", "plain_tts"]), False) == "plain_tts"
    assert tts_task(tpls(["asr", "tts_phones"]), True) == "tts_phones"
    assert tts_task(tpls(["asr", "tts_phones"]), False) is None and tts_task(tpls(["asr", "audiolm"]), True) is None
    card = "\n".join(usage_lines(tpls(["asr", "tts_phones"])))
    assert 'lm.tts("hello world", speaker_prompt="prompt.wav")' in card and 'lm.tts("hello world")' not in card
    card = "\n".join(usage_lines(tpls(["asr", "tts_phones"]), ["en-us"]))  # a model dir with a voice
    assert 'lm.tts("hello world")  # in the voice of voices/en-us.wav' in card


# ---- case 20 -------------------------------------------------------------------------------------
def test_case20_text_without_phones_is_rejected_by_utterance(model_dir, tmp_path):
    lm = speechlm.load(model_dir)
    for text in ("", "?!... --"):
        with pytest.raises(ValueError, match="input: .*no phone tokens"):  # an InputError
            lm.tts(text)
    wav, sr = lm.tts("hello")
    assert sr == 8000 and len(wav) > 0
    out = tmp_path / "out"
    texts = scp(tmp_path / "text", {"u1": "hello there", "u2": "?!", "u3": "good bye"})
    assert decode(model_dir, out, "--task", "plain_tts", "--input", str(texts)) == 1
    failed = kaldi_file(out / "failed")
    assert list(failed) == ["u2"] and "no phone tokens" in failed["u2"] and "'?!'" in failed["u2"]
    assert sorted(kaldi_file(out / "wav.scp")) == ["u1", "u3"]


# ---- case 21 -------------------------------------------------------------------------------------
def test_case21_input_beyond_the_context_is_refused_with_the_limit(model_dir, wavs, tmp_path):
    lm = speechlm.load(model_dir)
    assert isinstance(lm.asr(str(wavs["a1"])), str)  # a short word fits
    with pytest.raises(ValueError, match=rf"input: .* positions .* context is {CONTEXT}"):
        lm.asr(str(wavs["long"]))
    out = tmp_path / "out"
    assert decode(model_dir, out, "--task", "asr", "--input",
                  str(scp(tmp_path / "wav.scp", {"a1": wavs["a1"], "long": wavs["long"]}))) == 1
    failed = kaldi_file(out / "failed")
    assert list(failed) == ["long"] and f"context is {CONTEXT}" in failed["long"]
    assert list(kaldi_file(out / "text")) == ["a1"]


def test_an_output_ends_where_the_context_does(model_dir, wavs):
    """Prompt and text output together fit the model's context, whatever the decode max_len, in
    sampling and beam search (an HF model indexed past its position table: an IndexError in the
    agent loop's parser, a BERT of 512 positions; before the fix the output ran to max_len)."""
    pipe = speechlm.load(model_dir)
    tpl = pipe.template("asr")
    inputs = pipe.condition_tokens(tpl, {"speech": str(wavs["a1"])}, "a1")
    room = CONTEXT - pipe.prompt_positions(pipe.prompt_example(tpl, inputs, "a1"))
    assert 0 < room < 200
    for search in ("greedy", "sample", "beam"):
        cfg = DecodeConfig(search=search, max_len=400, min_len=300, beam_size=2, nbest=1 if search == "greedy" else 2,
                           temperature=2.0, ctc_weight=0.0).validate()
        outs = pipe.generate_outputs("asr", [inputs], cfg)[0]
        assert all(len(o.tokens) <= room for o in outs), (search, room, [len(o.tokens) for o in outs])
        assert any(len(o.tokens) == room for o in outs), search  # min_len asked for more: cut at the context


# ---- case 24 -------------------------------------------------------------------------------------
def test_case24_nbest_lists_are_written_and_returned(model_dir, wavs, tmp_path):
    conf = tmp_path / "beam.yaml"
    conf.write_text("search: beam\nbeam_size: 4\nnbest: 3\nmax_len: 6\n")
    out = tmp_path / "out"
    wav_scp = scp(tmp_path / "wav.scp", {"a1": wavs["a1"], "a2": wavs["a2"]})
    assert decode(model_dir, out, "--task", "asr", "--input", str(wav_scp), "--decode-config", str(conf)) == 0
    best = kaldi_file(out / "text")
    lines = [line.split(" ", 3) for line in (out / "text.nbest").read_text().splitlines()]
    for utt in ("a1", "a2"):
        mine = [ln for ln in lines if ln[0] == utt]
        assert [int(ln[1]) for ln in mine] == [1, 2, 3]
        scores = [float(ln[2]) for ln in mine]
        assert scores == sorted(scores, reverse=True)
        assert (mine[0][3] if len(mine[0]) > 3 else "") == best[utt]
        assert len({ln[3] if len(ln) > 3 else "" for ln in mine}) == 3  # distinct hypotheses
    # the Python API: (text, score) pairs, best first; the first is what asr() gives
    lm = speechlm.load(model_dir)
    cfg = DecodeConfig(search="beam", beam_size=2, max_len=6)
    nbest = lm.generate_nbest("asr", 3, cfg, speech=str(wavs["a1"]))
    assert len(nbest) == 3 and all(isinstance(t, str) and isinstance(s, float) for t, s in nbest)
    assert [s for _, s in nbest] == sorted((s for _, s in nbest), reverse=True)
    assert nbest[0][0] == lm.asr(str(wavs["a1"]), config=DecodeConfig(search="beam", beam_size=3, max_len=6))
    with pytest.raises(ValueError, match="one hypothesis"):
        lm.generate_nbest("asr", 2, DecodeConfig(search="greedy"), speech=str(wavs["a1"]))


def test_shard_jobs_then_merge_give_the_local_pools_output(model_dir, wavs, tmp_path, monkeypatch, caplog):
    """The recipe's stage 10: `--shard JOB` jobs of run.pl/slurm.pl, then a merge call that decodes
    nothing itself; the outputs are those of `--nj 2`'s local processes."""
    import subprocess

    wav_scp = scp(tmp_path / "wav.scp", {u: str(wavs[u]) for u in ("a1", "a2", "a3", "b1")})
    pool, jobs = tmp_path / "pool", tmp_path / "jobs"
    assert decode(model_dir, pool, "--task", "asr", "--input", str(wav_scp), "--nj", "2") == 0
    for shard in ("2", "1"):
        assert decode(model_dir, jobs, "--task", "asr", "--input", str(wav_scp), "--nj", "2", "--shard", shard) == 0
    assert not (jobs / "text").exists()  # a shard job leaves the merge to a later call
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("the merge call decoded again"))
    assert decode(model_dir, jobs, "--task", "asr", "--input", str(wav_scp), "--nj", "2") == 0
    for name in ("text", "text.nbest", "stopped", "failed"):
        assert (jobs / name).read_text() == (pool / name).read_text(), name
    bad = decode(model_dir, tmp_path / "x", "--task", "asr", "--input", str(wav_scp), "--nj", "2", "--shard", "3")
    assert bad != 0 and "--shard must be in 1..2 (--nj), got 3" in caplog.text


@pytest.mark.parametrize("task,prompted,says", [
    ("plain_tts", True, "'plain_tts' takes no speaker prompt"),  # a model that speaks one voice
    ("tts", False, "'tts' needs a speaker prompt"),
])
def test_tts_with_or_without_a_prompt_the_model_lacks(tmp_path, wavs, task, prompted, says):
    """lm.tts on a model whose one TTS task takes the other kind of call says so (not a missing 'tts')."""
    lm = speechlm.load(packed_model_dir(tmp_path, ("asr", task), CHARS))
    with pytest.raises(InputError, match=says):
        lm.tts("hello", speaker_prompt=next(iter(wavs.values())) if prompted else None)
    with pytest.raises(InputError, match="has no TTS task; it has: asr"):
        speechlm.load(packed_model_dir(tmp_path / "asr", ("asr",), CHARS)).tts("hello")


def test_a_shipped_voice_is_the_prompt_of_tts_without_one(tmp_path, wavs):
    """A model whose TTS takes a prompt speaks lm.tts(text) in its voices/ prompt (the mini recipe's
    packed model), as if it were given by hand; the server and agent find the task."""
    root = packed_model_dir(tmp_path, ("asr", "tts"), CHARS)
    with pytest.raises(InputError, match="'tts' needs a speaker prompt"):
        speechlm.load(root).tts("hello")
    (root / "voices").mkdir()
    voice = shutil.copy(next(iter(wavs.values())), root / "voices" / "en-us.wav")
    lm = speechlm.load(root)
    assert lm.speech_task() == "tts" and list(lm.voices) == ["en-us"]
    assert default_voice(["en-us", "default"]) == "default" and default_voice(["en-us", "en-gb"]) == "en-gb"
    task, inputs = lm.tts_inputs("hello")
    assert task == "tts" and str(voice) in inputs.values() and "hello" in inputs.values()
    # greedy: the same tokens as with the prompt given by hand (Codec 2's random phases make the samples differ)
    assert len(lm.tts("hello")[0]) == len(lm.tts("hello", speaker_prompt=str(voice))[0])

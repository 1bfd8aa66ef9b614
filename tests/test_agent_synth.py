"""Spoken versions of episodes: engines, held-out voices and engines, noise at an SNR, resumable
synthesis, and the Kaldi data dirs the agent task templates read."""
from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechlm.agent import synth as S
from speechlm.agent.datadir import dialogue_steps, write_asr_dir, write_dialogue_dir
from speechlm.agent.generator import generate_episodes

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None,
                                  reason="espeak-ng and sox are installed by tools/install.sh")


def test_spoken_form():
    assert S.spoken_form("set an alarm for seven thirty am") == "Set an alarm for seven thirty a m."
    assert S.spoken_form("what's on friday") == "What's on friday?"
    assert S.spoken_form("i am late") == "I am late."  # "am" after a non-number stays a word


def test_mix_at_snr_hits_the_target():
    rng = np.random.default_rng(0)
    speech = np.sin(np.linspace(0, 400 * np.pi, 16000)).astype(np.float32) * 0.05
    noise = rng.standard_normal(5000).astype(np.float32)  # shorter: tiled to the speech's length
    for snr in (20.0, 5.0, 0.0):
        mixed = S.mix_at_snr(speech, noise, snr)
        residual = mixed - speech
        measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(residual.astype(np.float64) ** 2))
        assert abs(measured - snr) < 0.01
    loud = S.mix_at_snr(speech * 15, noise, -10.0)  # would clip: scaled down below full scale
    assert np.max(np.abs(loud)) <= 0.99 + 1e-6


def test_test_split_voices_are_held_out():
    cfg = S.SynthConfig(train_engines=["espeak-ng", "festival"], test_engines=["espeak-ng", "festival", "flite"])
    for engine in ("espeak-ng", "flite", "festival"):
        train = set(S.voice_names(engine, "train", cfg.train_engines))
        test = set(S.voice_names(engine, "test", cfg.train_engines))
        if engine in cfg.train_engines:
            assert not train & test, engine
    # flite is test-only here: the test split may use all of its voices, training none
    assert set(S.voice_names("flite", "test", cfg.train_engines)) == set(S.FLITE_VOICES[0] + S.FLITE_VOICES[1])
    rng = random.Random(0)
    train_voices = [S.sample_voice(rng, "train", cfg) for _ in range(300)]
    assert "flite" not in {v.engine for v in train_voices}
    assert not {v.name.split("+")[-1] for v in train_voices if v.engine == "espeak-ng"} & set(S.ESPEAK_TEST)
    heavy = S.SynthConfig(train_engines=["espeak-ng", "festival"], engine_weights={"festival": 0.0})
    assert {S.sample_voice(rng, "train", heavy).engine for _ in range(50)} == {"espeak-ng"}
    with pytest.raises(ValueError, match="engine weights"):
        S.SynthConfig(engine_weights={"say": 1.0}).validate()
    with pytest.raises(ValueError, match="unknown or no engines"):
        S.SynthConfig(train_engines=["say"]).validate()


@pytest.mark.parametrize("engine,voice", [("espeak-ng", "en-us+m3"), ("flite", "slt"), ("festival", "kal_diphone")])
def test_each_engine_writes_16k_mono_16bit(tmp_path, engine, voice):
    if engine not in S.installed_engines() or shutil.which("sox") is None:
        pytest.skip(f"{engine} is not installed (tools/install.sh installs it)")
    if engine == "festival" and not S._festival_voice_installed(voice):
        pytest.skip(f"festival voice {voice} is not installed")
    v = S.Voice(engine, voice, 160 if engine == "espeak-ng" else 1.0)
    out = tmp_path / "x.wav"
    S.run_jobs([S.Job("turn on the kitchen lights at seven am", v, "x.wav")], tmp_path)
    info = sf.info(str(out))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    assert 0.8 < info.duration < 6
    wav, _ = sf.read(str(out))
    assert np.abs(wav).max() > 0.05  # speech, not silence


@needs_espeak
def test_synthesize_episodes_resumes_and_writes_data_dirs(tmp_path):
    from speechlm.data.kaldi import validate
    from speechlm.data.manifest import prepare_manifest
    from speechlm.tasks import load_template

    engines = [e for e in ("espeak-ng", "flite") if e in S.installed_engines()]
    cfg = S.SynthConfig(train_engines=["espeak-ng"], test_engines=engines, snrs=[10.0], noise_rate=0.5,
                        noise_kinds=["white", "babble"], seed=3)
    eps = generate_episodes(10, "train", seed=1, mix={"atomic": 0.5, "recovery": 0.5}) + \
        generate_episodes(6, "test", seed=1)
    counts = S.synthesize_episodes(eps, tmp_path / "wav", cfg, nj=2)
    assert counts["episodes"] == 16 and counts["made"] >= 16
    assert all(t["audio"] and sf.info(t["audio"]).samplerate == 16000 for e in eps for t in e.turns)
    assert {e.meta["engine"] for e in eps if e.split == "train"} == {"espeak-ng"}
    noisy = [e for e in eps if e.meta["snr"] is not None]
    assert noisy and all(e.turns[0]["audio"].endswith(f"_snr{e.meta['snr']:g}.wav") for e in noisy)
    # the punctuated form is what was spoken (the transcript has no commas)
    ep = next(e for e in eps if "spoken" in e.meta)
    expected = S.wav_name(ep.meta["spoken"][0], S.episode_voice(ep.id, ep.split, cfg))[:-4]
    assert ep.turns[0]["audio"].startswith(str(tmp_path / "wav" / expected))
    # one voice per episode, for all its turns
    asks = [e for e in eps if len(e.turns) == 2]
    assert asks and all(e.turns[0]["audio"].split("/")[-2] == e.turns[1]["audio"].split("/")[-2] for e in asks)
    before = {t["audio"]: open(t["audio"], "rb").read() for e in eps for t in e.turns}
    again = generate_episodes(10, "train", seed=1, mix={"atomic": 0.5, "recovery": 0.5}) + \
        generate_episodes(6, "test", seed=1)
    counts2 = S.synthesize_episodes(again, tmp_path / "wav", cfg, nj=2)
    assert counts2["made"] == 0 and counts2["noisy"] == 0  # everything kept
    assert [t["audio"] for e in again for t in e.turns] == [t["audio"] for e in eps for t in e.turns]
    clean = next(t["audio"] for e in eps for t in e.turns if "_snr" not in t["audio"])
    import os
    os.unlink(clean)
    S.synthesize_episodes(again, tmp_path / "wav", cfg, nj=1)
    assert open(clean, "rb").read() == before[clean]  # re-synthesis gives the same bytes (no dither)

    data = tmp_path / "data"
    summary = write_dialogue_dir(eps, data)
    assert summary["utterances"] == sum(len(dialogue_steps(e)) for e in eps)
    assert validate(data) == []
    history = dict(line.split(" ", 1) for line in (data / "history").read_text().splitlines())
    cascade = dict(line.split(" ", 1) for line in (data / "history.cascade").read_text().splitlines())
    assert not any(h.startswith("user ") or " | user " in h for h in history.values())  # e2e: no user words
    assert any(" user " in " " + h for h in cascade.values())  # the ask-back's first turn, for the cascade
    for task, n in (("spoken_dialogue", summary["utterances"]), ("command", summary["utterances"])):
        got = prepare_manifest(load_template(task), data, tmp_path / "dump" / task)
        assert got["kept"] == n
    sc = prepare_manifest(load_template("spoken_command"), data, tmp_path / "dump" / "sc")
    assert 0 < sc["kept"] < summary["utterances"]
    write_asr_dir(eps, tmp_path / "asr")
    assert validate(tmp_path / "asr") == []
    assert prepare_manifest(load_template("asr"), tmp_path / "asr", tmp_path / "dump" / "asr")["kept"] == \
        len({t["audio"] for e in eps for t in e.turns})


@needs_espeak
def test_synth_command(tmp_path):
    from speechlm.cli import main
    from speechlm.agent.episodes import read_episodes

    eps_path = tmp_path / "e.jsonl"
    assert main(["agent", "generate", "--out", str(eps_path), "--n", "4", "--seed", "5"]) == 0
    assert main(["agent", "synth", "--episodes", str(eps_path), "--out-dir", str(tmp_path / "s"), "--nj", "2",
                 "--train-engines", "espeak-ng", "--data-dir", str(tmp_path / "d")]) == 0
    eps = read_episodes(tmp_path / "s" / "episodes.jsonl")
    assert all(t["audio"] for e in eps for t in e.turns)
    assert main(["validate-data", str(tmp_path / "d")]) == 0
    assert main(["agent", "datadir", "--episodes", str(tmp_path / "s" / "episodes.jsonl"), "--out-dir",
                 str(tmp_path / "d2")]) == 0
    assert (tmp_path / "d" / "response").read_text() == (tmp_path / "d2" / "response").read_text()
    assert main(["agent", "synth", "--episodes", str(eps_path), "--out-dir", str(tmp_path / "s"),
                 "--snr", "ten"]) == 1

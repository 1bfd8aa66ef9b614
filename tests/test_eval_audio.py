"""Audio metrics with known answers on espeak-ng speech: STOI, SI-SNR, PESQ, MCD, speaker
similarity, DNSMOS, and resampling when rates differ."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from speechlm.eval import build_metric
from speechlm.eval.audio import load_audio
from speechlm.eval.signal import mcd, si_snr
from tests.conftest import synth

SENT_A = "please call stella and ask her to bring these things with her from the store"
SENT_B = "six spoons of fresh snow peas and maybe a snack for her brother bob"


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    """Espeak-ng speech: voice en-us saying A and B, voice en+f4 saying B, plus degraded copies of A."""
    d = tmp_path_factory.mktemp("eval_audio")
    out = {
        "a": synth(d / "a.wav", SENT_A, voice="en-us"),
        "b": synth(d / "b.wav", SENT_B, voice="en-us"),
        "b_other": synth(d / "b_other.wav", SENT_B, voice="en+f4", pitch=80),
    }
    wav, sr = sf.read(out["a"], dtype="float32")
    rng = np.random.default_rng(0)
    sf.write(d / "a_noisy.wav", wav + rng.normal(0, 0.05, len(wav)).astype(np.float32), sr)
    out["a_noisy"] = d / "a_noisy.wav"
    # The same utterance at 16 kHz (resampled by sox): metrics must resample it back.
    import subprocess

    subprocess.run(["sox", "-R", str(out["a"]), "-r", "16000", str(d / "a16k.wav")], check=True)
    out["a16k"] = d / "a16k.wav"
    return out


def score(name: str, hyp: Path, ref: Path, **options) -> float:
    res = build_metric(name, **options)({"u": str(hyp)}, {"u": str(ref)})
    return res.summary[res.key]


def test_wav_against_itself_gives_stoi_one_and_high_si_snr(wavs):
    assert score("stoi", wavs["a"], wavs["a"]) == pytest.approx(1.0, abs=1e-6)
    assert score("si_snr", wavs["a"], wavs["a"]) > 60.0
    assert score("mcd", wavs["a"], wavs["a"]) == pytest.approx(0.0, abs=1e-6)


def test_noise_lowers_signal_metrics(wavs):
    assert score("stoi", wavs["a_noisy"], wavs["a"]) < 0.95
    snr = score("si_snr", wavs["a_noisy"], wavs["a"])
    assert 0.0 < snr < 20.0
    assert score("mcd", wavs["a_noisy"], wavs["a"]) > 3.0


def test_pesq_self_versus_noisy(wavs):
    clean = score("pesq", wavs["a"], wavs["a"])
    assert clean > 4.4  # wide-band PESQ of identical signals is ~4.64
    assert score("pesq", wavs["a_noisy"], wavs["a"]) < clean - 1.5
    nb = score("pesq", wavs["a"], wavs["a"], pesq_mode="nb")
    assert nb > 4.3
    with pytest.raises(ValueError, match="'wb'"):
        build_metric("pesq", pesq_mode="xx")


def test_rates_differ_hypothesis_is_resampled(wavs):
    # A 16 kHz copy scored against the 22.05 kHz original: nearly perfect, not garbage.
    assert load_audio(wavs["a16k"])[1] == 16000
    assert score("stoi", wavs["a16k"], wavs["a"]) > 0.95
    assert score("si_snr", wavs["a16k"], wavs["a"]) > 10.0


def test_si_snr_is_scale_invariant_and_mcd_dtw_handles_shift():
    rng = np.random.default_rng(1)
    x = rng.normal(size=16000).astype(np.float32)
    noise = rng.normal(size=16000).astype(np.float32) * 0.1
    assert si_snr(0.3 * (x + noise), x) == pytest.approx(si_snr(x + noise, x), abs=1e-4)
    assert si_snr(x + noise, x) == pytest.approx(20.0, abs=0.5)  # noise at -20 dB
    # A delayed copy: DTW alignment finds it, frame-by-frame comparison does not.
    t = np.arange(32000) / 16000
    sig = (np.sin(2 * np.pi * 220 * t * (1 + t)) * np.hanning(32000)).astype(np.float32)
    shifted = np.concatenate([np.zeros(800, np.float32), sig])[:32000]
    assert mcd(shifted, sig, 16000, align="dtw") < mcd(shifted, sig, 16000, align="none")


def test_speaker_similarity_same_voice_beats_different_voice(wavs):
    metric = build_metric("spk_sim")
    res = metric({"same": str(wavs["b"]), "other": str(wavs["b_other"])},
                 {"same": str(wavs["a"]), "other": str(wavs["a"])})
    same, other = res.per_utt["same"]["spk_sim"], res.per_utt["other"]["spk_sim"]
    assert same > other + 0.05, (same, other)
    assert same > 0.7
    assert res.worst(1)[0][0] == "other"
    assert res.summary["spk_sim"] == pytest.approx((same + other) / 2)


def test_dnsmos_prefers_speech_to_noise(wavs, tmp_path):
    rng = np.random.default_rng(2)
    sf.write(tmp_path / "noise.wav", rng.normal(0, 0.3, 16000 * 3).clip(-1, 1).astype(np.float32), 16000)
    res = build_metric("dnsmos")({"speech": str(wavs["a"]), "noise": str(tmp_path / "noise.wav")})
    speech, noise = res.per_utt["speech"], res.per_utt["noise"]
    for k in ("ovrl", "sig", "bak", "p808"):
        assert 1.0 <= speech[k] <= 5.0
    assert speech["bak"] > noise["bak"] + 1.0  # background noise is what BAK measures
    assert speech["ovrl"] > noise["ovrl"]
    assert res.worst(1)[0][0] == "noise"


def test_missing_audio_file_names_the_utterance(wavs, tmp_path):
    with pytest.raises(FileNotFoundError, match="utterance u2: audio file not found: .*nowhere.wav"):
        build_metric("stoi")({"u1": str(wavs["a"]), "u2": str(tmp_path / "nowhere.wav")},
                             {"u1": str(wavs["a"]), "u2": str(wavs["a"])})


def test_segment_and_pipe_specs(wavs):
    wav, sr = load_audio({"path": str(wavs["a"]), "start": 0.5, "end": 1.0})
    assert sr == 22050 and len(wav) == pytest.approx(0.5 * 22050, abs=2)
    piped, sr2 = load_audio(f"sox {wavs['a']} -t wav - |", 16000)
    assert sr2 == 16000 and len(piped) == pytest.approx(len(load_audio(wavs["a"])[0]) * 16000 / 22050, abs=4)


class _LoudnessMOS(torch.nn.Module):
    """A small real predictor: 1 + 4 * sigmoid(rms in dB / 10 + 3)."""

    def forward(self, wav):
        db = 10 * torch.log10(wav.pow(2).mean(-1) + 1e-10)
        return 1 + 4 * torch.sigmoid(db / 10 + 3)


@pytest.mark.parametrize("fmt", ["pt", "pt2"])
def test_local_mos_model_torchscript_export_and_onnx(wavs, tmp_path, fmt):
    import onnxruntime as ort
    import speechmos.dnsmos as dn

    example = torch.randn(1, 16000)
    path = tmp_path / f"mos.{fmt}"
    if fmt == "pt":
        torch.jit.trace(_LoudnessMOS(), example).save(str(path))
    else:
        T = torch.export.Dim("T", min=2, max=10_000_000)
        torch.export.save(torch.export.export(_LoudnessMOS(), (example,), dynamic_shapes=({1: T},)), str(path))
    wav16, _ = load_audio(wavs["a"], 16000)
    sf.write(tmp_path / "quiet.wav", 0.05 * wav16, 16000)
    res = build_metric("mos", mos_model=str(path))({"loud": str(wavs["a"]), "quiet": str(tmp_path / "quiet.wav")})
    expect = float(_LoudnessMOS()(torch.from_numpy(wav16)[None]))
    assert res.per_utt["loud"]["mos"] == pytest.approx(expect, rel=1e-5)  # read at 16 kHz, as the model expects
    assert res.per_utt["loud"]["mos"] > res.per_utt["quiet"]["mos"]
    assert res.worst(1)[0][0] == "quiet"
    if fmt == "pt2":
        return
    # an ONNX predictor: DNSMOS's own P.835 network on its 9.01 s input window
    onnx = Path(dn.__file__).parent / "dnsmos_models" / "sig_bak_ovr.onnx"
    clip = np.resize(wav16, 144160).astype(np.float32)
    sf.write(tmp_path / "clip.wav", clip, 16000, subtype="FLOAT")
    res = build_metric("mos", mos_model=str(onnx))({"clip": str(tmp_path / "clip.wav")})
    sess = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    direct = sess.run(None, {sess.get_inputs()[0].name: clip[None]})[0].reshape(-1)[0]
    assert res.summary["mos"] == pytest.approx(float(direct), rel=1e-4)
    with pytest.raises(ValueError, match="--mos-model"):
        build_metric("mos")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        build_metric("mos", mos_model=str(tmp_path / "nowhere.pt"))
